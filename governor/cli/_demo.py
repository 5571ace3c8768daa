"""``governor demo``: the example agents, offline, under their policies."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from governor._errors import decimal_text
from governor._files import not_json_lines
from governor.cli._fail import fail
from governor.cli._text import given, positive_count, same_file

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExportResult

    from governor.spend._open import AnySpendStore

__all__ = ["register"]

_COMMAND = "governor demo"

_EXAMPLES = Path("examples") / "agents"
# Where a wheel puts examples/agents (pyproject.toml's force-include).
_INSTALLED_EXAMPLES = "_demo_agents"


def register(sub: Any, name: str, help_text: str) -> None:
    """Add ``demo`` to the command line."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=(
            "Run the example LangGraph agents with no network and no API keys: "
            "a map-reduce research agent over HotpotQA, a calculator agent over "
            "GSM8K, a triage agent on a model cascade, a help-desk agent on the "
            "response cache, a runaway agent the loop guard stops, and one "
            "research task whose budget is too small for it. "
            "GOVERNOR_PROVIDER=live sends the same calls to the real models. "
            "Exits 2 for a bad option (a --traces or --spend-db that is a "
            "folder, an existing --traces file that is not JSON lines, a "
            "--spend-db that is not a SQLite database, or both naming one "
            "file), 1 when the spend store does not answer or the traces "
            "file cannot be written."
        ),
    )
    parser.add_argument(
        "--count", type=positive_count, default=3, help="tasks per agent (default 3)"
    )
    parser.add_argument(
        "--speed",
        type=_speed,
        default=None,
        help="offline latency multiplier, a finite number >= 0: 1 realistic "
        "(default), 0 instant",
    )
    parser.add_argument(
        "--traces",
        default=".governor/traces.jsonl",
        type=given("a file name"),
        help="JSONL file the spans are written to (default .governor/traces.jsonl)",
    )
    parser.add_argument(
        "--spend-db",
        default=None,
        type=given("a SQLite path, a .jsonl path or a redis:// URL"),
        help="spend store the calls are recorded to (default: GOVERNOR_SPEND_DB "
        "or .governor/spend.sqlite3); read it with `governor report`",
    )
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    parser.set_defaults(handler=_run)


def _speed(text: str) -> float:
    """Read ``--speed``: the offline latencies are multiplied by it and slept."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"must be a finite number >= 0 (1 realistic, 0 instant), got {text!r}"
        )
    return value


@dataclass
class _Row:
    """One task's line of the table and row of ``--json``; ``detail`` says why
    a stopped task stopped, or which tiers a cascade task went through."""

    agent: str
    task_id: str
    calls: int
    tokens: int
    cost_usd: str
    budget_left_usd: str
    stop_reason: str
    seconds: float
    cache_hits: int = 0
    saved_usd: str = "0"
    detail: str = ""
    refused: int = 0


def _run(args: argparse.Namespace) -> int:
    """Exit 2 for a bad option, 1 when the spend store or traces file fails."""
    if args.count < 1:
        return fail(args, _COMMAND, "--count must be at least 1", 2)
    problem = _check_traces(Path(args.traces)) or _check_spend(args)
    if problem is not None:
        message, status = problem
        return fail(args, _COMMAND, message, status)
    examples = _examples_dir()
    if examples is None:
        message = (
            "the example agents were not found: not in examples/agents/ here, "
            "nor in the installed package. Run it from a checkout of the "
            "llm-governor repository, or reinstall llm-governor."
        )
        return fail(args, _COMMAND, message, 2)
    if importlib.util.find_spec("langchain_litellm") is None:
        message = (
            "the examples use LangChain's ChatLiteLLM. Install it with: "
            "pip install 'llm-governor[examples]'"
        )
        return fail(args, _COMMAND, message, 2)
    return _demo(args, examples)


def _check_traces(path: Path) -> tuple[str, int] | None:
    """Why spans could not be written to ``path``, and the exit status, if so."""
    if path.is_dir():
        return (
            f"--traces {path} is a folder; give a file name such as "
            f"{path / 'traces.jsonl'}",
            2,
        )
    # The file, or the nearest folder above it that exists (it makes the rest).
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return None
    if existing == path:
        writable = os.access(path, os.W_OK)
    else:
        writable = existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)
    if not writable:
        return (
            f"cannot write --traces {path}; give a file in a folder that you can "
            "write to",
            1,
        )
    what = not_json_lines(path) if existing == path else None
    if what is None:
        return None
    return (
        f"--traces {path} is an existing file that is not JSON lines ({what}); "
        "spans are appended to the file, which would damage it: give a new "
        "file name or a .jsonl file of spans",
        2,
    )


def _check_spend(args: argparse.Namespace) -> tuple[str, int] | None:
    """Why ``--spend-db`` cannot be recorded to, and the exit status, if so."""
    from governor.cli._spend_source import not_a_spend_file
    from governor.spend import default_spend_target

    target = args.spend_db or default_spend_target()
    option = "--spend-db" if args.spend_db else "the spend store (GOVERNOR_SPEND_DB)"
    if "://" not in target and same_file(Path(args.traces), Path(target)):
        return (
            f"--traces {args.traces} and {option} {target} are the same file; "
            "spans and spend records need a file each: give --traces another "
            "file name",
            2,
        )
    problem = not_a_spend_file(target, reading=False)
    if problem is None:
        return None
    return (
        f"{option}: {problem}; give a new file name, the SQLite file of an "
        "earlier demo, a .jsonl path or a redis:// URL",
        2,
    )


def _open_spend(args: argparse.Namespace, target: str) -> AnySpendStore | int:
    """The spend store, or the exit status after saying why it cannot be used.

    A Redis store is asked for one empty range first: a Redis that does not
    answer would otherwise lose every record of the run, a warning each.
    """
    import sqlite3

    from governor._errors import ConfigError
    from governor.cli._spend_source import redis_down, unreachable
    from governor.spend import open_store

    try:
        store = open_store(target)
    except ConfigError as exc:
        return fail(args, _COMMAND, exc, 2, message=f"--spend-db: {exc}")
    except sqlite3.Error as exc:
        return _not_sqlite(args, target, exc)
    now = datetime.now(UTC)
    try:
        next(iter(store.query(now, now + timedelta(microseconds=1))), None)
    except Exception as exc:
        store.close()
        if isinstance(exc, sqlite3.Error):
            return _not_sqlite(args, target, exc)
        if not redis_down(target, exc):
            raise
        given = bool(args.spend_db)
        message = unreachable(target, exc, option="--spend-db", given=given)
        return fail(args, _COMMAND, exc, 1, message=message, code="store_unavailable")
    return store


def _not_sqlite(args: argparse.Namespace, target: str, exc: Exception) -> int:
    """Say that SQLite cannot use ``target`` (a damaged database, no access)."""
    message = (
        f"--spend-db {target} cannot be used as a SQLite spend store ({exc}); "
        "give a new file name or the SQLite file of an earlier demo"
    )
    return fail(args, _COMMAND, exc, 2, message=message)


def _demo(args: argparse.Namespace, examples: Path) -> int:
    from governor import Governor, govern
    from governor.spend import default_spend_target
    from governor.stores import MemoryLedger
    from governor.telemetry import configure_tracing
    from governor.telemetry._setup import ENV_TRACES_FILE, service_name_from_env
    from governor.testing import ENV_PROVIDER, install_offline_provider

    spend_target = args.spend_db or default_spend_target()
    spend = _open_spend(args, spend_target)
    if isinstance(spend, int):
        return spend
    appending = _has_records(spend)
    traces_appended = _has_content(Path(args.traces))
    research = _load(examples / "research.py", "governor_demo_research")
    math_tools = _load(examples / "math_tools.py", "governor_demo_math_tools")
    triage = _load(examples / "triage.py", "governor_demo_triage")
    runaway = _load(examples / "runaway.py", "governor_demo_runaway")
    faq = _load(examples / "faq.py", "governor_demo_faq")
    live = os.environ.get(ENV_PROVIDER, "offline") == "live"
    if not live:
        install_offline_provider(
            _chain(
                research.offline_responder,
                math_tools.offline_responder,
                triage.offline_responder,
                runaway.offline_responder,
                faq.offline_responder,
            ),
            speed=args.speed,
        )
    _log_on_own_lines()
    traces = Path(args.traces)
    service = service_name_from_env() or "governor-demo"
    exporter = _counted_exporter(traces)
    with _env_unset(ENV_TRACES_FILE):  # the spans go to --traces only
        provider = configure_tracing(service_name=service, exporters=[exporter])
    ledger = MemoryLedger()
    governors: list[Governor] = []

    def governor(policy: Any) -> Governor:
        gov = Governor(policy, ledger=ledger, tracer_provider=provider, spend=spend)
        governors.append(gov)
        return gov

    _say(args, f"llm-governor demo ({'live models' if live else 'offline models'})")
    rows = [
        *_run_research(args, research, governor(research.POLICY), "research"),
        *_run_math(args, math_tools, governor(math_tools.POLICY)),
        *_run_triage(args, triage, governor(triage.POLICY)),
        _run_faq(args, faq, governor(faq.POLICY)),
        _run_task(
            args,
            govern(runaway.build_graph(), governor(runaway.POLICY)),
            "runaway (loop guard)",
            "rerun the same failing tests forever",
            runaway.task_input(),
        ),
        *_run_research(
            args,
            research,
            governor(research.POLICY.merged(_small_budget(research.POLICY))),
            "research (budget $0.001)",
            count=1,
        ),
    ]
    provider.shutdown()
    unwritten = sum(gov.close() for gov in governors)
    lost: int = exporter.lost
    shown = None if unwritten else spend_target
    held = _count_records(spend) if shown is not None and appending else None
    _print_table(
        args, rows, None if lost else traces, shown, _Appended(traces_appended, held)
    )
    if lost:
        print(
            f"governor demo: {lost} of {exporter.exported} spans could not be "
            f"written to --traces {traces} (the warning above says why); give "
            "a file on a disk with room that you can write to",
            file=sys.stderr,
        )
    if unwritten:
        print(
            f"governor demo: {unwritten} spend record(s) could not be written "
            f"to {spend_target} (the warnings above say why), so a report "
            "from it would leave them out; check that the store answers, or "
            "give --spend-db a file",
            file=sys.stderr,
        )
    return 1 if lost or unwritten else 0


def _counted_exporter(path: Path) -> Any:
    """The JSONL span exporter for ``path``, counting in ``exported`` and
    ``lost`` the spans it was given and those it could not write."""
    from opentelemetry.sdk.trace.export import SpanExportResult

    from governor.telemetry._setup import JsonlSpanExporter

    class CountedExporter(JsonlSpanExporter):
        def __init__(self, path: Path) -> None:
            super().__init__(path)
            self.exported = 0
            self.lost = 0

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            result = super().export(spans)
            self.exported += len(spans)
            if result is not SpanExportResult.SUCCESS:
                self.lost += len(spans)
            return result

    return CountedExporter(path)


@contextmanager
def _env_unset(name: str) -> Iterator[None]:
    """Hide an environment variable for the ``with`` block."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def _run_research(
    args: argparse.Namespace,
    module: ModuleType,
    governor: Any,
    label: str,
    count: int | None = None,
) -> list[_Row]:
    from governor import govern

    agent = govern(module.build_graph(), governor)
    rows = []
    for item in module.questions(count or args.count):
        inputs = {"question": item["question"]}
        rows.append(_run_task(args, agent, label, item["question"], inputs))
    return rows


def _run_math(
    args: argparse.Namespace, module: ModuleType, governor: Any
) -> list[_Row]:
    from governor import govern

    agent = govern(module.build_graph(), governor)
    return [
        _run_task(args, agent, "math-tools", p["question"], module.task_input(p))
        for p in module.problems(args.count)
    ]


def _run_task(
    args: argparse.Namespace, agent: Any, label: str, title: str, inputs: Any
) -> _Row:
    from governor import GovernorHalt

    _say(args, f"  {label:<26} {_short(title)}", end="")
    start = time.monotonic()
    outcome, detail = "completed", ""
    try:
        result = agent.invoke(inputs, {"metadata": {"environment": "demo"}})
    except GovernorHalt as exc:
        outcome, detail = f"stopped: {exc.code}", str(exc)
    else:
        if isinstance(result, dict) and "path" in result:
            outcome = f"cascade: {result['path']}"
            detail = outcome  # the --json row says what the text line says
    report = agent.last_report
    seconds = time.monotonic() - start
    _say(args, f"  {outcome}, {_calls_text(report)}")
    left = report.budget_left_usd
    return _Row(
        agent=label,
        task_id=report.task_id,
        calls=report.calls,
        tokens=report.tokens,
        cost_usd=decimal_text(report.cost_usd),
        budget_left_usd="-" if left is None else decimal_text(left),
        stop_reason=report.stop_reason or "completed",
        seconds=round(seconds, 2),
        cache_hits=report.cache_hits,
        refused=report.refused,
        saved_usd=decimal_text(report.saved_usd),
        detail=detail,
    )


def _calls_text(report: Any) -> str:
    """A task's calls and cost for its progress line: with cache hits, the
    calls sent and those the cache answered, each with its money."""
    calls = f"{report.calls} call{'' if report.calls == 1 else 's'}"
    if not report.cache_hits:
        return f"{calls}, ${report.cost_usd}"
    return (
        f"{calls} sent (${report.cost_usd}), {report.cache_hits} answered from "
        f"the cache (saved ${report.saved_usd})"
    )


def _run_triage(
    args: argparse.Namespace, module: ModuleType, governor: Any
) -> list[_Row]:
    from governor import govern
    from governor.adapters.litellm import GovernedLiteLLM

    agent = govern(module.build_graph(GovernedLiteLLM(governor)), governor)
    return [
        _run_task(
            args, agent, "triage (cascade)", q["question"], {"question": q["question"]}
        )
        for q in module.questions(args.count + 1)
    ]


def _run_faq(args: argparse.Namespace, module: ModuleType, governor: Any) -> _Row:
    from governor import govern
    from governor.adapters.litellm import GovernedLiteLLM

    agent = govern(module.build_graph(GovernedLiteLLM(governor)), governor)
    label = "faq (cache)"
    title = "a help-desk queue with repeated questions"
    return _run_task(args, agent, label, title, module.session(args.count + 1))


def _small_budget(policy: Any) -> Any:
    from governor import Budget, Policy

    return Policy(name=f"{policy.name}-small", budgets=[Budget(max_usd="0.001")])


@dataclass(frozen=True)
class _Appended:
    """What the run added to: whether the traces file held spans before it,
    and how many calls the spend store holds now if it held some before."""

    traces: bool = False
    spend_total: int | None = None


def _has_content(path: Path) -> bool:
    """Whether ``path`` is a file with something in it already."""
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def _has_records(store: AnySpendStore) -> bool:
    """Whether the spend store holds a record already (False if unreadable)."""
    try:
        return next(iter(store.query()), None) is not None
    except Exception:  # only the footer's wording depends on it
        logging.getLogger(__name__).debug("spend store not read", exc_info=True)
        return False


def _count_records(store: AnySpendStore) -> int | None:
    """How many calls the spend store holds, or None if it cannot be read."""
    try:
        return sum(1 for _ in store.query())
    except Exception:  # only the footer's wording depends on it
        logging.getLogger(__name__).debug("spend store not counted", exc_info=True)
        return None


def _print_table(
    args: argparse.Namespace,
    rows: list[_Row],
    traces: Path | None,
    spend: str | None,
    appended: _Appended | None = None,
) -> None:
    """The tasks' table (or JSON); ``traces`` is None when spans were lost,
    ``spend`` when spend records were."""
    appended = appended or _Appended()
    if args.json:
        written = None if traces is None else str(traces)
        out = {"tasks": [r.__dict__ for r in rows], "traces": written}
        print(json.dumps({**out, "spend": spend}))
        return
    headers = (
        "agent",
        "task",
        "calls",
        "tokens",
        "cost USD",
        "budget left",
        "cache hits",
        "saved USD",
        "stop",
    )
    table = [
        (
            r.agent,
            r.task_id[:8],
            str(r.calls),
            str(r.tokens),
            r.cost_usd,
            r.budget_left_usd,
            str(r.cache_hits),
            r.saved_usd,
            r.stop_reason,
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print("\n" + line + "\n" + "-" * len(line))
    for entry in table:
        print("  ".join(c.ljust(w) for c, w in zip(entry, widths, strict=True)))
    total = sum((_decimal(r.cost_usd) for r in rows), start=_decimal("0"))
    print("-" * len(line))
    print(_summary(rows, total))
    for row in rows:
        if row.detail and row.stop_reason != "completed":
            print(f"\n{row.agent} {row.task_id[:8]} was stopped: {row.detail}")
    if traces is not None:
        after = ", appended to earlier runs' spans" if appended.traces else ""
        print(f"\nTraces: {traces} (one JSON span per line{after}).")
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if endpoint:
        print(f"Also sent over OTLP to {endpoint}.")
    else:
        print(
            "Send them to Jaeger or Tempo instead: set "
            "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 (see docs/tracing/)."
        )
    if spend is not None:
        print(
            f"Spend: {_spend_text(spend, appended.spend_total)}; by team and "
            f"feature: governor report --db {spend}"
        )


def _spend_text(spend: str, total: int | None) -> str:
    """The spend store, and what it holds in all when earlier runs wrote to it."""
    if total is None:
        return spend
    return (
        f"{spend} (appended to earlier runs: it now holds {total} spend records "
        "in all, calls sent, cache hits and refusals)"
    )


def _summary(rows: list[_Row], total: object) -> str:
    """The totals line, naming each kind of call the spend report counts."""
    sent = sum(r.calls for r in rows)
    hits = sum(r.cache_hits for r in rows)
    refused = sum(r.refused for r in rows)
    line = f"{len(rows)} tasks, {sent} model calls sent, ${total}"
    if hits or refused:
        line += (
            f"; {hits} answered from the cache and {refused} refused before "
            f"sending (the spend report counts all {sent + hits + refused})"
        )
    return line


def _decimal(value: str) -> Any:
    from decimal import Decimal

    return Decimal(value)


def _chain(*responders: Any) -> Any:
    def respond(model: str, messages: list[dict[str, Any]], tools: Any) -> Any:
        for responder in responders:
            answer = responder(model, messages, tools)
            if answer is not None:
                return answer
        return None

    return respond


def _examples_dir() -> Path | None:
    """The example agents: those of the checkout this package runs from,
    else the copy an installed wheel carries, else the working directory's
    (a checkout beside an install that carries none)."""
    here = Path(__file__).resolve()
    candidates = (
        here.parents[2] / _EXAMPLES,
        here.parents[1] / _INSTALLED_EXAMPLES,
        Path.cwd() / _EXAMPLES,
    )
    for candidate in candidates:
        if (candidate / "research.py").is_file():
            return candidate
    return None


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load example {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _short(text: str, width: int = 48) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


# True while a progress line printed with end="" waits for its outcome.
_open_line = False


def _say(args: argparse.Namespace, text: str, end: str = "\n") -> None:
    global _open_line
    if not args.json:
        print(text, end=end, flush=True)
        _open_line = end == ""


class _OwnLineHandler(logging.Handler):
    """Log records on stderr, each on its own line even mid-progress-line."""

    def emit(self, record: logging.LogRecord) -> None:
        global _open_line
        if _open_line and _one_screen():
            print(flush=True)
            _open_line = False
        print(self.format(record), file=sys.stderr, flush=True)


def _one_screen() -> bool:
    """Whether stdout and stderr show in one place (a terminal, or one pipe
    or file as with ``2>&1``), where a warning would land inside a progress
    line (each sent elsewhere, breaking the line would split the row in the
    stdout file instead)."""
    try:
        if sys.stdout.isatty() and sys.stderr.isatty():
            return True
        out, err = os.fstat(sys.stdout.fileno()), os.fstat(sys.stderr.fileno())
    except (AttributeError, ValueError, OSError):  # replaced or closed streams
        return False
    return (out.st_dev, out.st_ino) == (err.st_dev, err.st_ino)


def _log_on_own_lines() -> None:
    """The demo is an app: it shows library warnings, never inside its lines."""
    handler = _OwnLineHandler(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(handler)
