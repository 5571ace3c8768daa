"""Read recorded agent runs from a file or a folder of files.

A file holds either JSON lines, one run per line, or one JSON document: a
run object (as mini-swe-agent writes each ``.traj.json``, pretty-printed)
or a list of runs. A run is in the trajectory format of
:mod:`governor.loops._trajectory` or is a mini-swe-agent run
(:mod:`governor.loops._mini`). Files may be gzipped, whatever their name,
and may start with a byte-order mark.

A folder is read with its sub-folders (mini-swe-agent's SWE-bench runner
writes ``<instance_id>/<instance_id>.traj.json``): every ``*.json``,
``*.jsonl`` and ``*.traj`` file, gzipped too (``*.json.gz``), in order of
their paths; names starting with a dot are left out. A ``.traj`` file is
read as JSON in these formats: SWE-agent's own ``.traj`` format (a
``trajectory`` of action and observation steps) is not read, and is named
as such. A JSON document in a folder whose one JSON object is not a run (it
has neither ``calls`` nor ``messages``, as mini-swe-agent's ``preds.json``)
is skipped and reported.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from itertools import chain
from pathlib import Path
from typing import Any

from governor._errors import ConfigError
from governor._textlines import numbered_lines
from governor.loops._fields import kind_of
from governor.loops._mini import from_mini_swe_agent
from governor.loops._trajectory import Trajectory, trajectory_from_dict

__all__ = ["OnSkip", "read_trajectories", "run_from_dict", "run_name"]

logger = logging.getLogger(__name__)

#: Called with a file of a folder that holds no run, and why it was skipped.
OnSkip = Callable[[Path, str], None]

_RUN_SUFFIXES = (".json", ".jsonl", ".traj")
_GZ = ".gz"
_FIX_LINE = "fix or drop that line (the format is in docs/loops.md)"
_FIX_RUN = "fix or remove that run (the format is in docs/loops.md)"
_NOT_A_RUN = (
    "a JSON object with neither 'calls' (a trajectory-format run) nor "
    "'messages' (a mini-swe-agent run)"
)


@dataclass(frozen=True, slots=True)
class _Place:
    """Where a run was read: a file and its line, or its place in a list."""

    file: Path
    line: int | None = None
    item: int | None = None

    def __str__(self) -> str:
        if self.line is not None:
            return f"{self.file}:{self.line}"
        if self.item is not None:
            return f"{self.file}: run {self.item} of the list"
        return str(self.file)

    @property
    def fix(self) -> str:
        return _FIX_LINE if self.line is not None else _FIX_RUN

    def also(self, other: _Place) -> str:
        """How to name ``other``, where the same id was seen before."""
        if other.file == self.file and other.line is not None:
            return f"on line {other.line}"
        return f"in {other}"


def read_trajectories(
    path: str | Path, *, on_skip: OnSkip | None = None
) -> Iterator[Trajectory]:
    """Yield the runs of a file, or of every run file in a folder.

    A value that cannot be read, or a run id seen before, raises
    :class:`ConfigError` naming the file and the line (or the run).
    ``on_skip`` hears of each file of a folder that holds no run (by
    default a warning is logged). ``OSError`` (a missing file) passes
    through.
    """
    root = Path(path)
    folder = root.is_dir()
    files = _run_files(root) if folder else [root]
    skip = on_skip or _log_skip
    seen: dict[str, _Place] = {}
    for file in files:
        for place, run in _runs(file, in_folder=folder, on_skip=skip):
            if run.id in seen:
                raise ConfigError(
                    f"{place}: run id {run.id!r} is also "
                    f"{place.also(seen[run.id])}; give each run its own id (the "
                    "train/test split and the injected loops follow it) or drop "
                    "the repeat"
                )
            seen[run.id] = place
            yield run


def _log_skip(file: Path, reason: str) -> None:
    logger.warning("skipped %s: %s", file, reason)


def run_name(name: str) -> str:
    """A run file's name less ``.gz``, ``.json`` / ``.jsonl`` and ``.traj``."""
    stem = name
    for suffixes in ((_GZ,), (".jsonl", ".json"), (".traj",)):
        for suffix in suffixes:
            if stem.lower().endswith(suffix) and len(stem) > len(suffix):
                stem = stem[: -len(suffix)]
                break
    return stem


def _run_files(root: Path) -> list[Path]:
    files = sorted(
        (
            file
            for file in root.rglob("*")
            if _is_run_file(file.relative_to(root)) and file.is_file()
        ),
        key=lambda file: file.relative_to(root).parts,
    )
    if not files:
        raise ConfigError(
            f"no run files in {root} (*.traj.json, *.json, *.jsonl or *.traj, "
            "gzipped too, in it or its sub-folders); point at a folder of them "
            "or at one file"
        )
    return files


def _is_run_file(relative: Path) -> bool:
    if any(part.startswith(".") for part in relative.parts):
        return False
    name = relative.name.lower().removesuffix(_GZ)
    return name.endswith(_RUN_SUFFIXES)


def _runs(
    file: Path, *, in_folder: bool, on_skip: OnSkip
) -> Iterator[tuple[_Place, Trajectory]]:
    """The runs of one file; a file of a single run may take its name as id."""
    values = _values(file)
    first = next(values, None)
    second = next(values, None)
    single = first is not None and second is None
    default_id = run_name(file.name) if single else None
    for place, value in chain(filter(None, (first, second)), values):
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"{place}: a JSON {kind_of(value)}, not a run object; {place.fix}"
            )
        if in_folder and single and not _is_run(value):
            on_skip(file, f"it holds {_not_a_run(value)}")
            continue
        try:
            run = run_from_dict(value, default_id=default_id)
        except ConfigError as exc:
            raise ConfigError(f"{place}: {exc}; {place.fix}") from exc
        yield place, run


def _is_run(value: Mapping[str, Any]) -> bool:
    return "calls" in value or "messages" in value


def _not_a_run(value: Mapping[str, Any]) -> str:
    """What a JSON object that is not a run is, for a skip or an error."""
    if isinstance(value.get("trajectory"), list):
        return _SWE_AGENT
    return _NOT_A_RUN


_SWE_AGENT = (
    "a SWE-agent trajectory ('trajectory' of action and observation steps, as "
    "SWE-agent's own .traj files hold), a format that is not read; give the "
    "trajectory format (docs/loops.md) or mini-swe-agent runs"
)


def run_from_dict(
    row: Mapping[str, Any], *, default_id: str | None = None
) -> Trajectory:
    """Read one run in either shape: the trajectory format or mini-swe-agent's.

    ``default_id`` is the id of a run that has none. A value that cannot be
    read raises :class:`ConfigError` naming it, as does a token count of
    more than a trillion (10**12) for one call: a corrupt record.
    """
    if "calls" in row:
        return _counts_checked(trajectory_from_dict(row, default_id=default_id))
    if "messages" in row:
        run = from_mini_swe_agent(row, default_id=default_id)
        return _counts_checked(run, own_format=False)
    if isinstance(row.get("trajectory"), list):
        raise ConfigError(f"this is {_SWE_AGENT}")
    raise ConfigError(
        "a run needs 'id', 'outcome' and 'calls' (the trajectory format in "
        "docs/loops.md), or must be a mini-swe-agent run with 'messages'"
    )


# No single call takes a trillion tokens: more means a corrupt record.
_MOST_TOKENS = 10**12
_COUNTS = ("prompt_tokens", "completion_tokens", "cached_tokens")


def _counts_checked(run: Trajectory, *, own_format: bool = True) -> Trajectory:
    """The run, if no call's token count passes :data:`_MOST_TOKENS`."""
    for number, call in enumerate(run.calls):
        for key in _COUNTS:
            count = getattr(call, key)
            if count is not None and count > _MOST_TOKENS:
                where = (
                    f"calls[{number}].{key}"
                    if own_format
                    else f"model call {number + 1}'s {key}"
                )
                raise ConfigError(
                    f"{where} is {Decimal(count):.3e}; more than a trillion (10**12) "
                    "tokens in one call cannot be right, the record is corrupt: "
                    "a token count is the call's own, such as 1662"
                )
    return run


def _values(file: Path) -> Iterator[tuple[_Place, object]]:
    """The JSON values of a file: one per line, or its one document's runs."""
    lines = numbered_lines(file)
    start = next(((n, text) for n, text in lines if text.strip()), None)
    if start is None:
        return
    number, text = start
    try:
        first = json.loads(text)
    except ValueError:
        pass
    else:
        if not isinstance(first, list):
            yield _Place(file, line=number), first
            yield from _json_lines(file, lines)
            return
    rest = "".join(line for _, line in lines)
    yield from _document(file, number, text + rest)


def _json_lines(
    file: Path, lines: Iterator[tuple[int, str]]
) -> Iterator[tuple[_Place, object]]:
    for number, text in lines:
        if not text.strip():
            continue
        try:
            yield _Place(file, line=number), json.loads(text)
        except ValueError as exc:
            raise ConfigError(
                f"{file}:{number}: not JSON ({exc}); {_FIX_LINE}"
            ) from exc


def _document(
    file: Path, first_line: int, text: str
) -> Iterator[tuple[_Place, object]]:
    """One JSON document that starts on ``first_line``: a run or a list of runs."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{file}:{first_line + exc.lineno - 1}: not JSON ({exc.msg} at column "
            f"{exc.colno}); a run file holds JSON lines (one run per line) or one "
            "JSON document (a run object, such as a mini-swe-agent .traj.json, or "
            "a list of runs)"
        ) from exc
    if isinstance(document, list):
        for item, value in enumerate(document, start=1):
            yield _Place(file, item=item), value
    else:
        yield _Place(file), document
