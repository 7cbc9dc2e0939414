"""The command line: useful output, and one line (no traceback) for a user's mistake."""

from __future__ import annotations

import subprocess
import sys

import pytest

from carousel.cli import main


def test_cells_lists_the_registry(capsys):
    assert main(["cells"]) == 0
    out = capsys.readouterr().out
    assert "lstm1997  lstm  gates=igo" in out
    assert "cifg" in out and "peepholes=ci,co" in out


def test_demo_runs_a_tiny_training(capsys):
    assert main(["demo", "--steps", "2", "--hidden-size", "8", "--cell", "gru"]) == 0
    out = capsys.readouterr().out
    assert "step    2  loss" in out and "--- sample" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--steps", "0"], "carousel demo: error: steps must be at least 1; got 0"),
        (["demo", "--cell", "lstm3"], "carousel demo: error: unknown cell 'lstm3'"),
        (["demo", "--lr", "x"], "carousel demo: error: DemoConfig.lr must be a number; got 'x'"),
        (["demo", "--preset", "nope"], "carousel demo: error: unknown preset 'nope'"),
    ],
)
def test_user_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_module_entry_point():
    done = subprocess.run(
        [sys.executable, "-m", "carousel", "cells"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and "peephole" in done.stdout
