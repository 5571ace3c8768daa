"""The ``governor`` entry point: behaviour shared by every command."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from governor.cli import main
from governor.cli._text import count, positive_count


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


def test_python_dash_m_governor_runs_the_command() -> None:
    """`python -m governor` is the `governor` command, as `-m governor.cli` is."""
    done = subprocess.run(
        [sys.executable, "-m", "governor", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout.split()[0]) == (0, "governor")


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


@pytest.mark.parametrize(
    ("kind", "text", "value"),
    [(count, "0", 0), (count, "7", 7), (positive_count, "1", 1)],
)
def test_whole_number_arguments_read_their_value(
    kind: Callable[[str], int], text: str, value: int
) -> None:
    """count takes 0 or more, positive_count 1 or more."""
    assert kind(text) == value


@pytest.mark.parametrize(
    ("kind", "text"),
    [(count, "-1"), (count, "1.5"), (positive_count, "0"), (positive_count, "x")],
)
def test_whole_number_arguments_refuse_others(
    kind: Callable[[str], int], text: str
) -> None:
    """Below the least value, or not a whole number: argparse's type error."""
    with pytest.raises(argparse.ArgumentTypeError, match=f"got '{text}'"):
        kind(text)


class _Stop(Exception):
    """Ends the demo as soon as its tracer provider is asked for."""


@pytest.mark.parametrize(
    ("env", "expected"), [(None, "governor-demo"), ("my-agent", "my-agent")]
)
def test_demo_spans_follow_otel_service_name(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: str | None,
    expected: str,
) -> None:
    """`OTEL_SERVICE_NAME=my-agent governor demo`: the spans come from my-agent."""
    import governor.telemetry

    asked: list[str | None] = []

    def configure_tracing(*, service_name: str | None = None, **_: object) -> None:
        asked.append(service_name)
        raise _Stop

    monkeypatch.setattr(governor.telemetry, "configure_tracing", configure_tracing)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GOVERNOR_DEBUG", "1")
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    if env is None:
        monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    else:
        monkeypatch.setenv("OTEL_SERVICE_NAME", env)
    with pytest.raises(_Stop):
        main(["demo", "--speed", "0", "--traces", str(tmp_path / "t.jsonl")])
    assert asked == [expected]


@pytest.mark.parametrize(
    "argv", [["eval", "anomalies", ".", "--trials", "-5"], ["demo", "--count", "0"]]
)
def test_counts_below_one_are_refused_by_the_parser(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A negative or zero count is a usage error, not a numpy traceback."""
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert "a positive whole number" in capsys.readouterr().err


@pytest.mark.parametrize("json_out", [False, True])
def test_an_unknown_option_points_at_its_commands_help(
    capsys: pytest.CaptureFixture[str], json_out: bool
) -> None:
    """It pointed at 'governor --help', whose page lists no option of replay."""
    argv = ["replay", "--bogus", *(["--json"] if json_out else [])]
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    out, err = capsys.readouterr()
    if json_out:
        message = json.loads(out)["error"]["message"]
        assert message == "unrecognized arguments: --bogus; see governor replay --help"
    else:
        assert "usage: governor replay" in err
        assert "governor replay: error: unrecognized arguments: --bogus" in err


def test_the_demo_finds_the_agents_an_installed_wheel_carries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Installed from a wheel (no checkout), it said the agents were missing."""
    from governor.cli import _demo

    site = tmp_path / "site-packages"
    carried = site / "governor" / "_demo_agents"
    carried.mkdir(parents=True)
    (carried / "research.py").write_text("")
    monkeypatch.setattr(_demo, "__file__", str(site / "governor/cli/_demo.py"))
    own = tmp_path / "examples" / "agents"  # a user's folder of that name
    own.mkdir(parents=True)
    (own / "research.py").write_text("raise SystemExit('not the demo')")
    monkeypatch.chdir(tmp_path)
    assert _demo._examples_dir() == carried

    (carried / "research.py").unlink()
    assert _demo._examples_dir() == own
    (own / "research.py").unlink()
    assert _demo._examples_dir() is None


def test_the_wheel_carries_the_example_agents() -> None:
    """pyproject.toml maps examples/agents into the package the demo reads."""
    import tomllib

    from governor.cli import _demo

    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    mapped = config["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert mapped == {"examples/agents": f"governor/{_demo._INSTALLED_EXAMPLES}"}


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["eval", "loops", "runs.jsonl", "--bogus"], "governor eval loops"),
        (["policy", "packs", "--bogus"], "governor policy packs"),
    ],
)
def test_an_unknown_option_of_a_subcommand_names_the_subcommand(
    capsys: pytest.CaptureFixture[str], argv: list[str], command: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert f"usage: {command} " in err
    assert f"{command}: error: unrecognized arguments: --bogus" in err
