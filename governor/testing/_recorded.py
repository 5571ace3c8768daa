"""Recorded real answers and public prompt sets shipped with the package.

The files under ``governor/testing/data`` are small subsets of public
benchmarks (sources and licences in that folder's README.md). They let the
offline provider answer known prompts with what a real model once said, and
give the example agents real questions without a network.

The data files are built once by :func:`rebuild` from a checkout of the
source data sets; nothing here is needed at run time except the loaders::

    python -m governor.testing._recorded --rebuild SRC_DIR
"""

from __future__ import annotations

import argparse
import ast
import copy
import csv
import functools
import gzip
import hashlib
import io
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ROUTERBENCH_MODELS",
    "PromptSet",
    "load_prompts",
    "rebuild",
    "recorded_answer",
]

PromptSet = Literal["hotpotqa", "gsm8k", "routerbench"]

# RouterBench model name -> the LiteLLM id whose bundled price is closest to
# what RouterBench charged for it (README.md in the data folder gives the
# prices side by side). WizardLM-13B-V1.2 has no priced LiteLLM id and is left
# out of the shipped subset.
ROUTERBENCH_MODELS: dict[str, str] = {
    "gpt-4-1106-preview": "gpt-4-1106-preview",
    "gpt-3.5-turbo-1106": "gpt-3.5-turbo-1106",
    "claude-v2": "anthropic.claude-v2:1",
    "claude-v1": "anthropic.claude-v1",
    "claude-instant-v1": "anthropic.claude-instant-v1",
    "meta/llama-2-70b-chat": "anyscale/meta-llama/Llama-2-70b-chat-hf",
    "mistralai/mixtral-8x7b-chat": "together_ai/mistralai/Mixtral-8x7B-Instruct-v0.1",
    "zero-one-ai/Yi-34B-Chat": "fireworks_ai/accounts/fireworks/models/yi-34b-chat",
    "meta/code-llama-instruct-34b-chat": (
        "fireworks_ai/accounts/fireworks/models/code-llama-34b-instruct"
    ),
    "mistralai/mistral-7b-chat": "together_ai/mistralai/Mistral-7B-Instruct-v0.3",
}

_FILES: dict[PromptSet, str] = {
    "routerbench": "routerbench.jsonl.gz",
    "hotpotqa": "hotpotqa.jsonl.gz",
    "gsm8k": "gsm8k.jsonl.gz",
}

# What rebuild() takes from each source; the README in the data folder states
# the same numbers.
_ROUTERBENCH_SPLITS = {
    "routerbench_0shot_arc_challenge_train.csv.gz": 60,
    "routerbench_0shot_mbpp_train.csv.gz": 60,
}
_HOTPOTQA_ROWS = 40
_GSM8K_ROWS = 40


def load_prompts(name: PromptSet) -> list[dict[str, Any]]:
    """Return the shipped rows of one prompt set, in source order.

    Args:
        name: ``"hotpotqa"`` (``id``, ``question``, ``answer``, ``type``),
            ``"gsm8k"`` (``id``, ``question``, ``answer``, ``final_answer``) or
            ``"routerbench"`` (``sample_id``, ``eval_name``, ``prompt``,
            ``oracle_model``, ``responses`` keyed by LiteLLM model id, each with
            ``routerbench_model``, ``response``, ``correct`` and ``cost_usd`` as
            a decimal string).

    Returns:
        A fresh copy of the rows; changing it does not change later results.
    """
    if name not in _FILES:
        accepted = ", ".join(sorted(_FILES))
        raise ValueError(f"unknown prompt set {name!r}; accepted: {accepted}")
    return copy.deepcopy(list(_rows(name)))


def recorded_answer(model: str, prompt_text: str) -> str | None:
    """Return what ``model`` answered to ``prompt_text`` in RouterBench, if known.

    Args:
        model: a LiteLLM model id from :data:`ROUTERBENCH_MODELS` (values) or a
            RouterBench model name (keys).
        prompt_text: the prompt; leading and trailing whitespace is ignored.

    Returns:
        The recorded response text, or ``None`` when the pair is not recorded.
    """
    litellm_id = ROUTERBENCH_MODELS.get(model, model)
    return _answer_index().get((litellm_id, _prompt_key(prompt_text)))


def _prompt_key(prompt_text: str) -> str:
    return hashlib.sha256(prompt_text.strip().encode("utf-8")).hexdigest()


@functools.cache
def _rows(name: PromptSet) -> tuple[dict[str, Any], ...]:
    resource = resources.files("governor") / "testing" / "data" / _FILES[name]
    with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as text:
        return tuple(json.loads(line) for line in text if line.strip())


@functools.cache
def _answer_index() -> dict[tuple[str, str], str]:
    index: dict[tuple[str, str], str] = {}
    for row in _rows("routerbench"):
        key = _prompt_key(row["prompt"])
        for litellm_id, recorded in row["responses"].items():
            index[(litellm_id, key)] = recorded["response"]
    return index


# --- rebuilding the shipped subset (maintainers only) -----------------------


def rebuild(src_dir: Path, out_dir: Path) -> dict[str, int]:
    """Rebuild the shipped data files from a checkout of the source data sets.

    Args:
        src_dir: folder holding ``routing/routerbench_subset`` and
            ``prompts/{hotpotqa,gsm8k}`` as described in the data README.
        out_dir: where to write the ``*.jsonl.gz`` files.

    Returns:
        The number of rows written per file name.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    built: dict[PromptSet, list[dict[str, Any]]] = {
        "routerbench": list(_routerbench_rows(src_dir / "routing/routerbench_subset")),
        "hotpotqa": _hotpotqa_rows(src_dir / "prompts/hotpotqa"),
        "gsm8k": _gsm8k_rows(src_dir / "prompts/gsm8k"),
    }
    counts = {}
    for name, rows in built.items():
        file_name = _FILES[name]
        _write_jsonl_gz(out_dir / file_name, rows)
        counts[file_name] = len(rows)
    return counts


def _routerbench_rows(folder: Path) -> Iterator[dict[str, Any]]:
    csv.field_size_limit(sys.maxsize)
    for file_name, limit in _ROUTERBENCH_SPLITS.items():
        with gzip.open(folder / file_name, "rt", encoding="utf-8", newline="") as f:
            for count, row in enumerate(csv.DictReader(f)):
                if count == limit:
                    break
                yield _routerbench_row(row)


def _routerbench_row(row: dict[str, str]) -> dict[str, Any]:
    responses = {
        litellm_id: {
            "routerbench_model": name,
            "response": _unlist(row[f"{name}|model_response"]),
            "correct": float(row[name]),
            "cost_usd": _clean_usd(row[f"{name}|total_cost"]),
        }
        for name, litellm_id in ROUTERBENCH_MODELS.items()
    }
    return {
        "sample_id": row["sample_id"],
        "eval_name": row["eval_name"],
        "prompt": _unlist(row["prompt"]),
        "oracle_model": _cheapest_correct(responses),
        "responses": responses,
    }


def _cheapest_correct(responses: dict[str, dict[str, Any]]) -> str:
    # RouterBench's own oracle may name WizardLM, which is not shipped, so the
    # oracle is recomputed over the shipped models with RouterBench's costs.
    correct = [m for m, r in responses.items() if r["correct"] == 1.0]
    if not correct:
        return "no_model_correct"
    return min(correct, key=lambda m: Decimal(responses[m]["cost_usd"]))


def _clean_usd(cell: str) -> str:
    # RouterBench computed costs in floats (0.0042639999999999996 for 0.004264);
    # a pico-dollar grid removes that noise and is far below any token price.
    return format(Decimal(cell).quantize(Decimal("1e-12")).normalize(), "f")


def _unlist(cell: str) -> str:
    # RouterBench stores each text as the repr of a one-element Python list.
    value = ast.literal_eval(cell)
    if not (isinstance(value, list) and len(value) == 1 and isinstance(value[0], str)):
        raise ValueError(f"expected a one-element list of text, got {cell[:60]!r}")
    return value[0]


def _hotpotqa_rows(folder: Path) -> list[dict[str, Any]]:
    items = json.loads((folder / "hotpot_dev_v1_simplified.json").read_text("utf-8"))
    return [
        {"id": f"hotpotqa.dev.{i}", **item}
        for i, item in enumerate(items[:_HOTPOTQA_ROWS])
    ]


def _gsm8k_rows(folder: Path) -> list[dict[str, Any]]:
    rows = []
    with (folder / "test.jsonl").open(encoding="utf-8") as f:
        for i, line in zip(range(_GSM8K_ROWS), f, strict=False):
            item = json.loads(line)
            final = item["answer"].rsplit("####", 1)[1].strip()
            rows.append({"id": f"gsm8k.test.{i}", **item, "final_answer": final})
    return rows


def _write_jsonl_gz(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    lines = "".join(
        json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows
    )
    buffer = io.BytesIO()
    # mtime=0 and no file name in the header make the output byte-reproducible.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz:
        gz.write(lines.encode("utf-8"))
    path.write_bytes(buffer.getvalue())


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m governor.testing._recorded")
    parser.add_argument("--rebuild", metavar="SRC_DIR", type=Path, required=True)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "data",
        help="output folder (default: the package's data folder)",
    )
    args = parser.parse_args(argv)
    for file_name, count in rebuild(args.rebuild, args.out).items():
        print(f"{file_name}: {count} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
