"""Normalization and hashing of what the loop guard observes.

Two observations are "the same" when their normalized forms hash alike, so
normalization decides what counts as a repeat: whitespace and the key order of
arguments never matter; with masking on, neither do the hex addresses, UUIDs,
timestamps, durations, counters ("request #7", "attempt 3"), long numeric ids
(six digits or more, epoch times, also with a fraction), request and trace
ids, process ids and pytest's numbered temporary folders that make two
identical outcomes print differently. The last four (and "attempt 3") number
the attempt, yet also the item a walk over requests or processes is on: they
are masked only where calls with the same arguments are compared. Other hex
runs (commit SHAs, checksums) are not masked: they name the work, not the
attempt.
"""

from __future__ import annotations

import hashlib
import json
import operator
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "changed_words",
    "digest",
    "normalize_args",
    "normalize_result",
    "normalize_result_ids",
    "normalize_text",
    "shingles",
    "tokens",
    "words",
]

_DIGEST_BYTES = 16
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# One alternation, so a result is scanned once. Timestamps come before
# durations, so "12:00:01.5s" is masked as one token. Every token but a counter
# starts at a word boundary, checked once, and the first character picks the
# branches worth trying: on agents' tool results, twice as fast as trying every
# branch at every place.
# A hex run is masked only where a label or a format says it numbers the
# request or its trace (a W3C traceparent, "request_id=9f3c...", "req_9f3c..."):
# a bare one may be a commit or a checksum, the item worked on. A number loses
# its fraction only as an epoch: 10 or 13 digits starting with 1 before the
# point (Unix seconds or milliseconds, 2001 to 2033) and three fractional
# digits or more, or fewer after a time label ("ts": 1765012345.5), so an
# amount keeps its cents.
_COUNTER = r"(?P<counter>#\d+\b)"
_UUID_TOKEN = (
    r"(?P<uuid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
    r"[0-9a-fA-F]{12}\b)"
)
_TRACE = (
    r"(?P<trace>[0-9a-fA-F]{2}-(?P<trace_v>[0-9a-fA-F]{32})-[0-9a-fA-F]{16}-"
    r"[0-9a-fA-F]{2}\b)"
)
_DIGIT_LED = (
    r"(?P<addr>0x[0-9a-fA-F]{4,}\b)"
    r"|(?P<time>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?Z?"
    r"|\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\b)"
    r"|(?P<duration>\d+(?:\.\d+)?\s?(?:ms|us|µs|ns|s|sec|secs|seconds?|minutes?)\b)"
    r"|(?P<id>1\d{9}(?:\d{3})?\.\d{3,9}\b|\d{6,}\b)"
)
_SEP = r"[\"']?\s?[:=]?\s?"
_EPOCH = (
    r"(?P<epoch>(?:[A-Za-z]+[_.-]|[a-z]+(?=[A-Z]))?"
    r"(?i:timestamp|time|ts|date|created|updated|modified|expires|expiry|at)"
    rf"{_SEP}[\"']?(?P<epoch_v>1\d{{9}}(?:\d{{3}})?\.\d{{1,9}})\b)"
)
# Tokens that number the attempt and nothing else: masked only when calls
# with the same arguments are compared (see normalize_result_ids).
_ATTEMPT_LED = (
    r"(?P<reqid>(?i:(?:request|req|trace|span|correlation)[ _-]?id\b)"
    rf"{_SEP}[\"']?(?P<reqid_v>(?=[0-9A-Za-z]*\d)[0-9A-Za-z]{{16,}})\b"
    r"|(?:req|request|trace|correlation)_(?=[0-9A-Za-z]*\d)[0-9A-Za-z]{12,}\b)"
    rf"|(?P<attempt>(?i:attempts?|retry|retries){_SEP}(?P<attempt_v>\d+)\b)"
    rf"|(?P<pid>(?i:pid){_SEP}(?P<pid_v>\d+)\b)"
    r"|(?P<tmp>pytest-of-[^\s/\\]+[/\\]pytest-(?P<tmp_v>\d+)\b)"
)
_VOLATILE = re.compile(
    rf"{_COUNTER}|\b(?:(?=[0-9a-fA-F])(?:{_UUID_TOKEN}|{_TRACE})"
    rf"|(?=\d)(?:{_DIGIT_LED})|(?=[A-Za-z])(?:{_ATTEMPT_LED}|{_EPOCH}))"
)
# The same without the attempt's tokens, for calls with other arguments: a
# walk over requests, traces or processes prints a new one for each item.
_VOLATILE_ANY_ARGS = re.compile(
    rf"{_COUNTER}|\b(?:(?=[0-9a-fA-F]){_UUID_TOKEN}"
    rf"|(?=\d)(?:{_DIGIT_LED})|(?=[A-Za-z]){_EPOCH})"
)
_ATTEMPT_KINDS = frozenset(("reqid", "trace", "attempt", "pid", "tmp"))
# Kinds whose match holds a label ("pid 4012"): only the value, the group
# named ``<kind>_v``, is masked, so "pid <pid>" still reads as a process id.
_LABELLED = frozenset(("reqid", "attempt", "pid", "tmp", "epoch"))
# A labelled epoch reads as any other epoch: "ts": <id>.
_SHOWN = {"epoch": "id"}


# Masked tokens that can name an item (a ticket, an order, a user), not only a
# moment: a tool that acts on another item each call prints another one.
_ITEM_KINDS = frozenset(("uuid", "counter", "id", "epoch"))
# ... unless a label says the token numbers the request or the attempt.
_NOISE_LABEL = re.compile(
    r"\b(?:request|req|trace|span|correlation|session|attempt|retry|try|run)"
    r"(?:[\s_-]?id)?\W{0,3}$",
    re.IGNORECASE,
)
_LABEL_CHARS = 24
_DECIMAL = re.compile(r"\d+\.\d+")


def _mask(match: re.Match[str]) -> str:
    """The masked form of one volatile token, its label kept."""
    kind = match.lastgroup or ""
    shown = _SHOWN.get(kind, kind)
    if kind in _LABELLED:
        value = f"{kind}_v"
        if match.group(value) is not None:
            text, start = match.group(), match.start()
            head, tail = match.start(value) - start, match.end(value) - start
            return f"{text[:head]}<{shown}>{text[tail:]}"
    return f"<{shown}>"


def _value(match: re.Match[str], kind: str) -> str:
    """The id a masked token holds: its value group's text, or all of it."""
    group = f"{kind}_v"
    if group in match.re.groupindex and match.group(group) is not None:
        return match.group(group)
    return match.group().lstrip("#")


def normalize_text(text: str) -> str:
    """Collapse every run of whitespace to one space and strip the ends."""
    return _SPACE.sub(" ", text).strip()


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, str):
        return normalize_text(value)
    return value


def normalize_args(args: Mapping[str, Any] | str) -> str:
    """Return a canonical string for tool arguments.

    A mapping, or a string holding a JSON object, becomes compact JSON with
    sorted keys and whitespace-collapsed string values; any other string is
    whitespace-collapsed.
    """
    if isinstance(args, str):
        stripped = args.strip()
        if not stripped.startswith("{"):
            return normalize_text(args)
        try:
            parsed = json.loads(stripped)
        except ValueError:
            return normalize_text(args)
        if not isinstance(parsed, dict):
            return normalize_text(args)
        args = parsed
    return json.dumps(
        _canonical(args), sort_keys=True, separators=(",", ":"), default=str
    )


def normalize_result(result: str, *, mask_volatile: bool) -> str:
    """Return a tool result with whitespace collapsed and, if asked, masked."""
    if mask_volatile:
        result = _VOLATILE.sub(_mask, result)
    return normalize_text(result)


def normalize_result_ids(result: str) -> tuple[str, str, frozenset[str]]:
    """Return a tool result masked two ways, normalized, and the item ids it holds.

    The first form masks every volatile token and is for comparing calls made
    with the same arguments: a retry that prints a new request id, attempt
    number or pid each time gets the same result. The second leaves those
    tokens (request and trace ids, traceparents, attempt and retry numbers,
    pids, pytest's temporary folders) as they are, as far as they were not
    masked otherwise (a number of six digits or more still is), and is for
    comparing calls with other arguments: a walk over requests, traces or
    processes prints a new one for each item, which is progress.

    The ids are what the second form masked of UUIDs (lower-cased), counters
    (``#4512`` as ``4512``) and long numbers (an epoch with a fraction also by
    its whole part) that no label before them calls a request, trace,
    session, attempt or retry number: the tokens that may name the item a
    call acted on. A result with none of the attempt's tokens is scanned once.
    """
    ids: set[str] = set()
    attempt = False

    def mask(match: re.Match[str]) -> str:
        nonlocal attempt
        kind = match.lastgroup or ""
        if kind in _ATTEMPT_KINDS:
            attempt = True
        elif kind in _ITEM_KINDS and not _noise(result, match.start()):
            value = _value(match, kind).lower()
            # An epoch with a fraction also by its seconds, as an argument
            # may write "1765012345.50" as 1765012345.5.
            ids.update((value, value.partition(".")[0]))
        return _mask(match)

    same_args = normalize_text(_VOLATILE.sub(mask, result))
    if not attempt:
        return same_args, same_args, frozenset(ids)
    ids.clear()
    any_args = normalize_text(_VOLATILE_ANY_ARGS.sub(mask, result))
    return same_args, any_args, frozenset(ids)


def _noise(text: str, start: int) -> bool:
    """Whether the words just before ``start`` label a request or attempt id."""
    return _NOISE_LABEL.search(text, max(0, start - _LABEL_CHARS), start) is not None


def tokens(text: str) -> set[str]:
    """The lower-cased words of ``text`` and the UUIDs and decimal numbers it
    holds whole, the forms :func:`normalize_result_ids` gives item ids in."""
    lowered = text.lower()
    found = set(_WORD.findall(lowered)) | set(_UUID.findall(lowered))
    return found | set(_DECIMAL.findall(lowered))


def digest(*parts: str) -> bytes:
    """Hash normalized parts into a short, collision-resistant key."""
    h = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.digest()


def words(text: str) -> list[str]:
    """Return the lower-cased words (runs of letters, digits and ``_``) of ``text``.

    Whitespace and punctuation are not words, so they never make two outputs
    differ.
    """
    return _WORD.findall(text.lower())


def shingles(tokens: Sequence[str], size: int) -> frozenset[int]:
    """Return the set of hashed word ``size``-grams of a list of words.

    Python's own tuple hash is used because the values never leave the
    process and it is several times faster than a cryptographic hash.
    """
    if len(tokens) <= size:
        return frozenset((hash(tuple(tokens)),)) if tokens else frozenset()
    # zip of shifted views builds the n-grams in C, without a Python loop.
    return frozenset(map(hash, zip(*(tokens[i:] for i in range(size)), strict=False)))


def changed_words(before: Sequence[str], after: Sequence[str]) -> int:
    """Count the words that differ between two word lists, in linear time.

    Lists of one length are compared position by position, so a template
    filled in with other values counts every slot that changed, even when the
    new value occurs elsewhere in the other list. Lists of different lengths
    count the words that one list holds more often than the other, taking the
    side with more.
    """
    if len(before) == len(after):
        return sum(map(operator.ne, before, after))
    old, new = Counter(before), Counter(after)
    return max((old - new).total(), (new - old).total())
