"""``governor policy``: list the ready-made packs, print a policy as JSON."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from governor.cli._fail import fail, too_deep
from governor.cli._text import given

if TYPE_CHECKING:
    from governor.policies import Policy

POLICY_HELP = (
    "'default', 'pack:NAME', a .json policy, or a .py file defining POLICY "
    "(file.py:NAME for another name)"
)
"""How every command that takes a policy describes what it takes."""

_EXAMPLE_PRICE = {"input_usd_per_mtok": 0.5, "output_usd_per_mtok": 1.5}


def unpriced_advice(model: str, reason: str, option: str = "--policy") -> str:
    """Say that ``model`` has no price and how to give one on the command line:
    the ``"pricing"`` of a JSON policy file passed with ``option``."""
    detail = f" ({reason})" if reason else ""
    example = json.dumps({"pricing": {"overrides": {model: _EXAMPLE_PRICE}}})
    return (
        f"no price is known for model {model!r}{detail}. Price it in a JSON "
        f"policy file given with {option}, e.g. {example} (US dollars per "
        'million tokens; {} prices a free model at zero), or give "pricing" a '
        '"default" price such as {"default": '
        f"{json.dumps(_EXAMPLE_PRICE)}}} for every model without one"
    )


def load_policy(spec: str) -> Policy:
    """The policy ``spec`` names, as every command that takes a policy reads it.

    A ``.py`` file is imported with its own folder first on ``sys.path``, as
    ``python file.py`` runs it, so that it can import a module beside it
    whether the command runs as ``governor`` or as ``python -m governor``;
    ``sys.path`` is as it was afterwards.

    Raises:
        ConfigError: the policy cannot be read, including a JSON file that
            nests too deeply to be read; the message names the file.
    """
    from governor._errors import ConfigError
    from governor._replay import load_policy as load

    path = Path(spec.partition(":")[0] if ".py:" in spec else spec)
    _check_not_empty(path)
    try:
        with _folder_first(path):
            return load(spec)
    except RecursionError as exc:
        raise ConfigError(too_deep(path, "a policy")) from exc


def _check_not_empty(path: Path) -> None:
    """Refuse a ``.json`` policy file that holds no JSON document at all.

    JSON's own complaint, "Expecting value: line 1 column 1", does not say
    that the file is empty (or blank), which is the likelier slip: a file
    saved before it was written, or written to the wrong path.
    """
    from governor._errors import ConfigError

    if path.suffix.lower() != ".json" or not path.is_file():
        return
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return  # the loader says what is wrong, naming the file
    if not text.strip():
        raise ConfigError(
            f"{path}: not a policy: the file is empty (no JSON document); a "
            'policy file holds one JSON object, such as {"budgets": '
            '[{"max_usd": "1"}]}, or {} for the defaults'
        )


@contextlib.contextmanager
def _folder_first(path: Path) -> Iterator[None]:
    """``path``'s folder first on ``sys.path`` while a ``.py`` policy loads.

    Modules the policy imported from its folder are forgotten afterwards, so
    that a second policy (``compare --a pa/policy.py --b pb/policy.py``)
    imports its own ``settings.py``, not the first one's.
    """
    if path.suffix.lower() != ".py" or not path.is_file():
        yield
        return
    folder = path.resolve().parent
    saved, known = list(sys.path), set(sys.modules)
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path[:] = saved
        for name in set(sys.modules) - known:
            if _inside(getattr(sys.modules[name], "__file__", None), folder):
                del sys.modules[name]


def _inside(file: str | None, folder: Path) -> bool:
    """Whether ``file`` lies in ``folder`` (or a package below it)."""
    return file is not None and Path(file).resolve().is_relative_to(folder)


def register(sub: Any, name: str, help_text: str) -> None:
    """Add ``policy packs`` and ``policy show`` to the command line."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=help_text
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    packs = actions.add_parser("packs", help="list the ready-made policy packs")
    packs.set_defaults(handler=_packs)
    show = actions.add_parser(
        "show", help="print a policy, every field, as JSON (after validation)"
    )
    show.add_argument(
        "spec",
        metavar="POLICY",
        type=given("a policy", required=True),
        help=POLICY_HELP,
    )
    show.add_argument(
        "--set-only",
        action="store_true",
        help="print only the fields the policy sets (a pack's, a file's), not "
        "the defaults: read back, it merges over another policy as the "
        "original does, where a full print would set every field",
    )
    show.add_argument(
        "--json",
        action="store_true",
        help="report an error as a JSON document on stdout too (the policy "
        "itself always prints as JSON)",
    )
    show.set_defaults(handler=_show)


def _packs(args: argparse.Namespace) -> int:
    from governor.policies.packs import PACKS

    for name, pack in PACKS.items():
        summary = (pack.__doc__ or "").strip().splitlines()[0]
        print(f"pack:{name:<16} {summary}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from governor._errors import ConfigError

    try:
        policy = load_policy(args.spec)
    except ConfigError as exc:
        return fail(args, "governor policy", exc, 2)
    print(json.dumps(as_json(policy, set_only=args.set_only), indent=2))
    return 0


def as_json(policy: Any, *, set_only: bool = False) -> Any:
    """A policy as JSON-ready data, every field, whatever it holds.

    With ``set_only``, only the fields set explicitly, at every depth, so
    that the policy read back merges as this one does (see
    ``Policy.merged``).

    A callable (a cache verifier or embedder) is written as the placeholder
    ``"<callable module.qualname>"``, and any other value JSON has no form
    for (an object in a tier's params) as its ``repr()`` text, so that every
    valid policy prints. Secret-named parameters (``api_key``, ``*_token``,
    ...) print as ``"***"``.
    """
    from pydantic_core import to_jsonable_python

    from governor.policies._base import masked

    if set_only:
        data = policy.model_dump(mode="json", exclude_unset=True, fallback=_placeholder)
        return masked(data)
    return masked(to_jsonable_python(policy, fallback=_placeholder))


def _placeholder(value: Any) -> str:
    if callable(value):
        module = getattr(value, "__module__", None) or "?"
        name = getattr(value, "__qualname__", None) or type(value).__qualname__
        return f"<callable {module}.{name}>"
    return repr(value)
