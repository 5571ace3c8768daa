"""The ``governor`` entry point: behaviour shared by every command."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from governor.cli import main


class _ClosedPipe(io.TextIOBase):
    """A stdout whose reader has gone: every write fails as a closed pipe does."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_stdout_ends_the_command_quietly(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`governor pricing gpt-4o | head -0`: exit 1, no "[Errno 32] Broken pipe"."""
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["pricing", "gpt-4o"]) == 1
    assert capsys.readouterr().err == ""


def test_a_reader_that_stops_early_gets_no_error_at_exit() -> None:
    """A real pipe closed before the output is flushed, as `| head -1` does.

    The output sits in stdout's buffer until the interpreter exits; the
    command flushes it itself and, the pipe being closed, points stdout at
    the null device so that the exit flush has nothing to complain about.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "governor.cli", "pricing", "gpt-4o"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 1
    assert err == ""
