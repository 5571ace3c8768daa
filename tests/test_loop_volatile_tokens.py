"""Volatile tokens in tool results: what masking hides and what it must not.

A failing call retried with the same arguments gets an error that prints a new
clock, request id or counter each time; masking makes those errors alike so
the repetition rules see the loop. Hex runs that name the work (a commit, a
checksum, an order) are left alone, so a map over them goes on.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from typing import Any

import pytest

from governor import Governor, LoopDetected
from governor.adapters.litellm import GovernedLiteLLM
from governor.loops import LoopGuard
from governor.loops._normalize import normalize_result, normalize_result_ids
from governor.policies import Loops
from governor.testing import OfflineAnswer, install_offline_provider, offline_model


def _hex(seed: int, digits: int = 32) -> str:
    """A random-looking hex run, the same for the same seed."""
    return f"{random.Random(seed).getrandbits(digits * 4):0{digits}x}"


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


# Each error prints something new on every attempt, nothing else changes.
RETRY_ERRORS: dict[str, Callable[[int], str]] = {
    "epoch-fraction": lambda i: (
        f'{{"error": "upstream 503", "ts": {1765012345 + i}.{i * 7 % 1000:03d}}}'
    ),
    "epoch-ms-fraction": lambda i: (
        f"Error 503 at {1765012345678 + 997 * i}.{i % 9 + 1}"
    ),
    "request-id-hex": lambda i: f"Error 503 request id {_hex(i)}",
    "request-id-key": lambda i: (
        f'{{"error": "bad gateway", "request_id": "{_hex(i)}"}}'
    ),
    "req-prefix": lambda i: f"Error 503 req=req_{_hex(i, 12)}",
    "traceparent": lambda i: (
        f"Error 503 traceparent=00-{_hex(i)}-{_hex(i + 1000, 16)}-01"
    ),
    "attempt": lambda i: f"Error 503 (attempt {i + 1})",
    "retry": lambda i: f"Error 503, retry {i + 1} of 40",
    "pid": lambda i: f"Error: address in use, pid {40000 + i}",
    "pytest-tmp": lambda i: f"FAILED: see basetemp/pytest-of-user/pytest-{i}/log.txt",
    "trace-id-key": lambda i: f"Error 503 trace_id={_hex(i)} spans=12",
    "pid-key": lambda i: f"Error: cannot kill pid={5000 + i * 13}",
}


def _first_verdict(guard: LoopGuard, calls: list[tuple[str, Any, str]]) -> Any:
    """Feed the calls in turn; return (call number, verdict) of the first one."""
    for number, (name, args, result) in enumerate(calls, 1):
        verdict = guard.on_tool_call(name, args, result, step=number)
        if verdict is not None:
            return number, verdict
    return None


@pytest.mark.parametrize("error", RETRY_ERRORS.values(), ids=RETRY_ERRORS.keys())
def test_the_same_failing_call_retried_is_stopped_by_repeat(
    error: Callable[[int], str],
) -> None:
    """Same arguments, an error new only in a volatile token: the 4th call."""
    calls = [("fetch", {"url": "http://svc/api"}, error(i)) for i in range(30)]
    first = _first_verdict(LoopGuard(Loops()), calls)
    assert first is not None, "the retry loop was never stopped"
    assert (first[0], first[1].rule) == (4, "repeat")


# Only clocks are masked between calls with other arguments: request ids,
# attempt numbers, pids and the like are masked between calls with the same
# arguments alone, as a walk over items prints a new one for each item.
CLOCKS = ("epoch-fraction", "epoch-ms-fraction")


@pytest.mark.parametrize("clock", CLOCKS)
def test_a_failing_call_retried_with_new_arguments_is_the_same_result(
    clock: str,
) -> None:
    """New arguments each attempt, the same error: same_result on the 12th."""
    error = RETRY_ERRORS[clock]
    calls = [
        ("fetch", {"url": "http://svc/api", "attempt": i}, error(i)) for i in range(30)
    ]
    first = _first_verdict(LoopGuard(Loops()), calls)
    assert first is not None, "the retry loop was never stopped"
    assert (first[0], first[1].rule) == (12, "same_result")


def test_an_agent_retrying_an_error_with_a_fractional_epoch_is_stopped() -> None:
    """The call path: the 5th model call, which would follow the 4th alike
    result, is refused (the trial's repro)."""
    sent = {"n": 0}
    call = {"name": "fetch", "arguments": {"url": "http://svc/api"}}

    def responder(model: str, messages: Any, tools: Any) -> Any:
        sent["n"] += 1
        return OfflineAnswer(tool_calls=[call])

    install_offline_provider(responder, speed=0)
    gov = Governor()
    llm = GovernedLiteLLM(gov)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "get the data"}]
    with gov.task() as task, pytest.raises(LoopDetected) as info:
        for i in range(40):
            answer = llm.completion(
                model=offline_model("gpt-4o-mini"), messages=messages
            )
            made = [c.model_dump() for c in answer.choices[0].message.tool_calls]
            messages.append({"role": "assistant", "content": None, "tool_calls": made})
            content = RETRY_ERRORS["epoch-fraction"](i)
            messages.append(
                {"role": "tool", "tool_call_id": made[0]["id"], "content": content}
            )
    assert info.value.rule == "repeat"
    assert '"ts": <id>' in str(info.value)
    assert (sent["n"], task.report().stop_reason) == (4, "loop_detected")


# -- work that must go on ------------------------------------------------------


# (tool, arguments, result) for item i: each call works on another item.
DISTINCT_WORK: dict[str, Callable[[int], tuple[str, Any, str]]] = {
    "commit-shas": lambda i: (
        "git_show",
        {"rev": _sha1(f"c{i}")},
        f"commit {_sha1(f'c{i}')}\nAuthor: bot <bot@example.com>\n\n    Bump version",
    ),
    "next-commit": lambda i: ("next_commit", {}, f"commit {_sha1(f'c{i}')}"),
    "file-md5s": lambda i: (
        "checksum",
        {"path": f"data/part-{i}.bin"},
        f"md5 {hashlib.md5(str(i).encode()).hexdigest()}",
    ),
    "file-sha256s": lambda i: (
        "bash",
        {"command": "sha256sum latest.bin"},
        f"{hashlib.sha256(str(i).encode()).hexdigest()}  latest.bin",
    ),
    "order-ids": lambda i: (
        "next_order",
        {},
        f'{{"order_id": "{_hex(i)}", "status": "shipped"}}',
    ),
    "content-checksums": lambda i: (
        "fetch_page",
        {"page": i},
        f'{{"etag": "{_hex(i)}", "checksum": "{_sha1(str(i))}"}}',
    ),
    "amounts": lambda i: (
        "transfer",
        {"amount": 1250000000.5 + i},
        f"transferred {1250000000.5 + i:.2f} USD",
    ),
    "request-lookups": lambda i: (
        "get_request_log",
        {"request_id": _hex(i)},
        f"request id {_hex(i)}: status 500, upstream timeout",
    ),
    "trace-lookups": lambda i: (
        "get_trace",
        {"trace_id": _hex(i)},
        f"traceparent 00-{_hex(i)}-{_hex(7, 16)}-01: 3 spans, 1 error",
    ),
    "killed-pids": lambda i: ("kill", {"pid": 4000 + i}, f"killed pid {4000 + i}"),
    # The arguments never name the request, trace, charge, process or attempt
    # the result prints: paging, a cursor, one queue or job after another.
    "request-pages": lambda i: (
        "next_request",
        {"page": i},
        f"request_id: {_hex(i, 20)} status 200 path /api",
    ),
    "trace-cursor": lambda i: (
        "next_trace",
        {"cursor": i},
        f"trace_id={_hex(i)} spans=12 status=ok",
    ),
    "charges-after": lambda i: (
        "list_next",
        {"after": f"ch_{i}"},
        f"charge req_{_hex(i, 14)} succeeded amount 100",
    ),
    "traceparent-pages": lambda i: (
        "next_span",
        {"page": i},
        f"traceparent 00-{_hex(i)}-{_hex(i + 99, 16)}-01 ok",
    ),
    "workers-per-queue": lambda i: (
        "start_worker",
        {"queue": f"q{i}"},
        f"started worker for queue, pid {5000 + i * 13}",
    ),
    "jobs-killed": lambda i: (
        "kill_job",
        {"job": f"job-{i}"},
        f"killed pid={5000 + i * 13}",
    ),
    "attempts-read": lambda i: (
        "get_attempt",
        {"n": i + 1},
        f"attempt {i + 1}: passed",
    ),
    "pytest-runs": lambda i: (
        "run_test",
        {"name": f"test_{i}"},
        f"PASSED see basetemp/pytest-of-u/pytest-{i}/log",
    ),
    "balances": lambda i: (
        "get_balance",
        {"account": f"A{i}"},
        f"balance: {1234567890 + i * 1000}.{i:02d} USD",
    ),
}


@pytest.mark.parametrize("work", DISTINCT_WORK.values(), ids=DISTINCT_WORK.keys())
def test_a_map_over_distinct_items_is_not_stopped(
    work: Callable[[int], tuple[str, Any, str]],
) -> None:
    """Forty items, one a call, each named only by its id: never a loop."""
    calls = [work(i) for i in range(40)]
    assert _first_verdict(LoopGuard(Loops()), calls) is None


@pytest.mark.parametrize(
    "text",
    [
        f"commit {_sha1('x')}",
        f"md5 {_hex(1)}",
        f"sha256 {hashlib.sha256(b'x').hexdigest()}",
        f'"order_id": "{_hex(2)}"',
        f"session id {_hex(3)}",
        "request_processing_v2 done",
    ],
)
def test_hex_runs_that_name_the_work_are_not_masked(text: str) -> None:
    """Only a request or trace label, or a traceparent, makes a hex run noise."""
    assert normalize_result(text, mask_volatile=True) == text


@pytest.mark.parametrize("amount", ["123456.78", "98765432.10", "23456789012.50"])
def test_a_long_amount_keeps_its_fraction(amount: str) -> None:
    """Only an epoch's digits (10 or 13, starting with 1) lose their fraction."""
    cents = amount[:-1] + str(9 - int(amount[-1]))
    masked = {
        normalize_result(f"paid {a}", mask_volatile=True) for a in (amount, cents)
    }
    assert len(masked) == 2


@pytest.mark.parametrize(
    "text",
    [
        "at 1765012345.5",
        '"ts": 1765012345.25',
        "created_at=1765012345.5",
        "createdAt: 1765012345678.5",
        "Timestamp: 1765012345.12",
        "expires 1765012345.9",
        "took until 1765012345.123",
        "done 1765012345.123456",
    ],
)
def test_an_epoch_loses_its_fraction_with_a_time_label_or_three_digits(
    text: str,
) -> None:
    """Milli- or microseconds, or a time label before it: an epoch clock."""
    other = text[:-1] + str(9 - int(text[-1]))
    assert "<id>" in normalize_result(text, mask_volatile=True)
    masked = {normalize_result(t, mask_volatile=True) for t in (text, other)}
    assert len(masked) == 1


@pytest.mark.parametrize(
    "text",
    [
        "balance: 1234567890.12 USD",
        "paid 1765012345.5",
        "total=1234567890123.45",
        "format 1234567890.12",
        "vat 1234567890.12",
    ],
)
def test_an_epoch_like_amount_keeps_its_cents(text: str) -> None:
    """One or two fractional digits and no time label: an amount, not a clock."""
    cents = re.sub(r"\.(\d)", lambda m: f".{9 - int(m[1])}", text, count=1)
    masked = {normalize_result(t, mask_volatile=True) for t in (text, cents)}
    assert len(masked) == 2


@pytest.mark.parametrize(
    ("text", "any_args"),
    [
        (f"request id {_hex(1)}", f"request id {_hex(1)}"),
        ("request id 1234567890123456", "request id <id>"),
        (f"req_{_hex(2, 14)} ok", f"req_{_hex(2, 14)} ok"),
        ("attempt 3 failed", "attempt 3 failed"),
        ("attempt #3 failed", "attempt <counter> failed"),
        ("pid 4012", "pid 4012"),
        ("pid 4012345", "pid <id>"),
        ("see tmp/pytest-of-u/pytest-12/x", "see tmp/pytest-of-u/pytest-12/x"),
        ("pid 4012 at 12:00:01 in 0.5s", "pid 4012 at <time> in <duration>"),
    ],
)
def test_the_attempts_tokens_are_kept_for_calls_with_other_arguments(
    text: str, any_args: str
) -> None:
    """For same_result, the attempt's tokens read as they did before they were
    masked; what was masked then still is."""
    same_args, compared, _ = normalize_result_ids(text)
    assert compared == any_args
    assert same_args == normalize_result(text, mask_volatile=True)
