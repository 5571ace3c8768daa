"""A governor imports what its calls need when it is built, not at the first
call: a process forked while a parent thread was still importing a module
would wait for good on that module's import lock."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import sys
from governor import Cache, Fanout, Governor, Policy
policy = Policy({arguments})
assert {modules!r}[0] not in sys.modules
Governor(policy)
print(",".join(name for name in {modules!r} if name in sys.modules))
"""


@pytest.mark.parametrize(
    ("arguments", "modules"),
    [
        ("fanout=Fanout(max_inflight_calls=2)", ("governor.stores._semaphore",)),
        ("fanout=Fanout(scope_caps={'team': 2})", ("governor.stores._semaphore",)),
        ("cache=Cache()", ("governor.cache", "governor.cache._embed")),
    ],
)
def test_the_modules_a_call_needs_are_imported_with_the_governor(
    arguments: str, modules: tuple[str, ...]
) -> None:
    script = CHECK.format(arguments=arguments, modules=modules)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, ",".join(modules)), done.stderr
