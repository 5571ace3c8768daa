"""Time and peak memory of `governor report` and `governor replay` on large stores.

Writes a synthetic spend store (JSONL and SQLite) of N records, shaped like a
busy service (tasks of one to nine calls, five teams, a tenth of the records
written a few seconds out of time order, a few repeated call ids), then runs
each command in a child process and prints its wall time and peak resident
memory::

    python benchmarks/bench_store_volume.py --records 100000 --dir volume-stores

Pass ``--pythonpath DIR`` to run the commands with another checkout's
``governor`` (the folder holding it), for a before and after on the same
stores.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from governor.spend import SpendRecord
from governor.spend._jsonl import JsonlSpendStore
from governor.spend._sqlite import SQLiteSpendStore

_MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini")
_TEAMS = ("search", "support", "billing", "growth", None)
_START = datetime(2026, 3, 1, tzinfo=UTC)
_BATCH = 5000


def _records(count: int, seed: int) -> Iterator[SpendRecord]:
    rng = random.Random(seed)
    clock_s, task, left, team = 0.0, 0, 0, None
    for n in range(count):
        if left == 0:
            task, left, team = task + 1, rng.randint(1, 9), rng.choice(_TEAMS)
        left -= 1
        clock_s += rng.random() * 2
        late_s = rng.random() * 5 if rng.random() < 0.1 else 0.0
        prompt, output = rng.randint(50, 9000), rng.randint(1, 2000)
        yield SpendRecord(
            ts=_START + timedelta(seconds=clock_s - late_s),
            task_id=f"task-{task:07d}",
            call_id=f"call-{n:08d}",
            model=rng.choice(_MODELS),
            provider="openai",
            input_tokens=prompt,
            output_tokens=output,
            cost_usd=Decimal(prompt * 25 + output * 100).scaleb(-8),
            team=team,
            user=f"u{rng.randint(1, 5000)}",
        )


def write_stores(count: int, folder: Path) -> tuple[Path, Path]:
    """Write the same records to a JSONL and a SQLite store in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    jsonl, sqlite = folder / f"spend-{count}.jsonl", folder / f"spend-{count}.sqlite3"
    if jsonl.exists() and sqlite.exists():
        return jsonl, sqlite
    records = list(_records(count, seed=7))
    records += records[:: max(count // 100, 1)]  # repeated call ids, written later
    lines, table = JsonlSpendStore(jsonl), SQLiteSpendStore(sqlite)
    for start in range(0, len(records), _BATCH):
        lines.record_many(records[start : start + _BATCH])
        table.record_many(records[start : start + _BATCH])
    table.close()
    return jsonl, sqlite


def measure(python: str, args: list[str], path: str | None) -> tuple[float, int]:
    """Wall seconds and peak resident KB of ``python -m governor.cli ARGS``."""
    script = (
        "import resource, runpy, sys; sys.argv = ['governor', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('governor.cli', run_name='__main__')\n"
        "finally:\n    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
        " file=sys.stderr)"
    )
    start = time.perf_counter()
    env = dict(os.environ, **({"PYTHONPATH": path} if path else {}))
    done = subprocess.run(
        [python, "-c", script, *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=args_cwd(),
    )
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr}")
    return elapsed, int(done.stderr.strip().splitlines()[-1])


def args_cwd() -> str:
    """A folder of no checkout, so that PYTHONPATH decides which governor runs."""
    return str(Path(os.sep))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=Path("volume-stores"))
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--pythonpath", default=None)
    args = parser.parse_args()
    path = str(Path(args.pythonpath).resolve()) if args.pythonpath else None
    jsonl, sqlite = write_stores(args.records, args.dir.resolve())
    runs = {
        "report --by model, JSONL": ["report", "--db", str(jsonl), "--by", "model"],
        "report --by model, SQLite": ["report", "--db", str(sqlite), "--by", "model"],
        "replay --policy default, JSONL": [
            "replay",
            "--db",
            str(jsonl),
            "--policy",
            "default",
            "--json",
        ],
        "replay --policy default, SQLite": [
            "replay",
            "--db",
            str(sqlite),
            "--policy",
            "default",
            "--json",
        ],
    }
    print(f"{args.records:,} records, governor from {path or 'this install'}")
    for name, command in runs.items():
        seconds, peak_kb = measure(args.python, command, path)
        print(f"{name:34} {seconds:7.1f} s  {peak_kb / 1024:7.0f} MB peak")


if __name__ == "__main__":
    main()
