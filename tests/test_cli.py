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


def test_train_runs_a_tiny_training(tmp_path, capsys):
    data = tmp_path / "t.txt"
    data.write_text("to be or not to be, that is the question\n" * 20, encoding="utf-8")
    argv = [
        "train",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--max-steps",
        "2",
        "--hidden-size",
        "8",
        "--cell",
        "gru",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "trained 2 steps" in out and "curves:" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--max-steps", "0"], "carousel train: error: max_steps must be at least 1"),
        (["train", "--cell", "lstm3"], "carousel train: error: unknown cell 'lstm3'"),
        (["train", "--lr", "x"], "carousel train: error: LMConfig.lr must be a number; got 'x'"),
        (["train", "--preset", "nope"], "carousel train: error: unknown preset 'nope'"),
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


def test_train_takes_a_job_and_defaults_to_the_language_model(capsys):
    assert main(["train", "lm", "--max-steps", "0"]) == 2
    assert "max_steps must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "lm" in capsys.readouterr().out
