"""A handwriting run through the shared loop, on tiny made-up digits: the run folder, the
commands around it (``train handwriting``, ``eval``, ``read``, ``plot``, ``--resume``), and
exact resume after kill -9 and after Ctrl-C (SIGINT) at a random step, for both tasks."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
import torch

from carousel.checkpoint import load_checkpoint
from carousel.cli import main
from carousel.data.unipen import write_stroke_file
from test_handwriting import fake_samples, glyph

pytestmark = pytest.mark.usefixtures("one_thread")

TESTS = Path(__file__).resolve().parent


def unipen_archive(path: Path, folders: dict[str, int]) -> Path:
    """A UNIPEN-format archive of made-up digits: ``folders`` maps a ``data/1a`` folder
    (so an organisation: ``apa`` Apple trains, ``val`` Valladolid validates, ``ibm`` IBM
    tests) to its number of digits."""
    with tarfile.open(path, "w:gz") as tar:

        def add(name: str, text: str) -> None:
            data = text.encode("latin-1")
            info = tarfile.TarInfo("train_r01_v07/" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for seed, (folder, count) in enumerate(folders.items()):
            samples = fake_samples(count, folder, seed)
            pen = "".join(
                ".PEN_DOWN\n" + "".join(f"{x:.2f} {y:.2f}\n" for x, y in s.strokes[0])
                for s in samples
            )
            segments = "".join(
                f'.SEGMENT CHARACTER {k} ? "{s.label}"\n' for k, s in enumerate(samples)
            )
            add(f"include/{folder}/w.dat", pen)
            add(f"data/1a/{folder}/w.dat", f".INCLUDE {folder}/w.dat\n{segments}")
    return path


TINY = [
    "--num-layers",
    "1",
    "--hidden-size",
    "16",
    "--dropout",
    "0",
    "--batch-size",
    "4",
    "--lr",
    "0.02",
    "--resample-distance",
    "0.1",
    "--no-progress",
]


def files(run: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of a run folder with its bytes and modification time (the lock file is
    the run's own bookkeeping: it names the process holding it)."""
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.name != ".lock"
    }


def test_train_eval_read_plot_and_resume_from_the_command_line(tmp_path, capsys):
    archive = unipen_archive(tmp_path / "u.tar.gz", {"apa": 12, "val": 10, "ibm": 10})
    run = tmp_path / "run"
    argv = ["train", "handwriting", "--data", str(archive), "--out", str(run), *TINY]
    assert main([*argv, "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "validation loss" in out and "test: accuracy" in out and "ibm: 10 digits" in out
    assert {"checkpoint.safetensors", "metrics.jsonl", "curves.png"} <= set(os.listdir(run))
    _, meta = load_checkpoint(run)
    assert meta["kind"] == "handwriting" and meta["task"] == "digits"
    assert meta["model"]["task"] == "digits" and meta["data"] == str(archive.resolve())
    assert meta["config"]["resample_distance"] == 0.1 and meta["cursor"]["step"] == 6
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "valid"] == [3, 6]

    assert main(["eval", str(run)]) == 0  # the archive it was trained on
    out = capsys.readouterr().out
    assert out.startswith(f"{archive.resolve()}: test (ibm; 10 digits): accuracy ")
    strokes = tmp_path / "two.txt"
    write_stroke_file(strokes, glyph(2, random.Random(7)))
    assert main(["read", str(run), str(strokes)]) == 0
    assert capsys.readouterr().out.strip() in "0123456789"
    assert main(["plot", str(run), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()

    # resuming a finished run says so and changes nothing; a longer run goes on
    before = files(run)
    assert main(["train", "handwriting", "--resume", str(run), "--no-progress"]) == 0
    assert "finished (done at step 6); nothing to do" in capsys.readouterr().out
    assert files(run) == before
    assert main(["train", "handwriting", "--resume", str(run), "--epochs", "3"]) == 0
    assert load_checkpoint(run)[1]["cursor"]["step"] == 9
    assert main(["train", "handwriting", "--resume", str(run), "--lr", "1"]) == 2
    assert "cannot resume" in capsys.readouterr().err
    assert main([*argv, "--epochs", "1"]) == 2  # a new run never overwrites a checkpoint
    assert "already holds a checkpoint" in capsys.readouterr().err

    # strings read by CTC: the same commands
    strings = tmp_path / "strings"
    more = ["--train-strings", "8", "--eval-strings", "4", "--min-digits", "2", "--max-digits", "3"]
    assert main(["train", "handwriting", "--task", "strings", "--data", str(archive),
                 "--out", str(strings), *TINY, *more, "--epochs", "1"]) == 0  # fmt: skip
    assert "test: CER greedy" in capsys.readouterr().out
    assert main(["eval", str(strings), "--data", str(archive)]) == 0
    assert "(ibm; 4 strings): CER greedy" in capsys.readouterr().out
    assert main(["read", str(strings), str(strokes), "--beam-width", "2"]) == 0


# ---------------------------------------------------------------------------- exact resume
SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, sys.argv[1])
    from test_handwriting import fake_samples
    from carousel.handwriting import HandwritingConfig, train_handwriting

    task, run, stop_at, how = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    parts = {"train": fake_samples(10, "a", 0), "validation": fake_samples(6, "b", 1)}
    cfg = HandwritingConfig(num_layers=2, hidden_size=8, dropout=0.3, batch_size=3, epochs=3,
                            augment=0.5, train_strings=7, eval_strings=4, min_digits=2,
                            max_digits=3, lr=0.02, resample_distance=0.1, log_every=1,
                            checkpoint_every=1, threads=1, seed=3)

    def hook(step):  # called after each checkpoint (twice at an epoch's end: signal once)
        if step == stop_at and not signalled:
            signalled.append(step)
            os.kill(os.getpid(), signal.SIGKILL if how == "kill" else signal.SIGINT)

    signalled = []
    resume = os.path.exists(os.path.join(run, "checkpoint.safetensors"))
    try:
        train_handwriting(None if resume else cfg, parts, run, task=task, resume=resume,
                          progress=False, on_checkpoint=hook)
    except KeyboardInterrupt:
        sys.exit(130)
    """
)


def _script(task: str, run: Path, stop_at: int = -1, how: str = "kill") -> int:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(TESTS), task, str(run), str(stop_at), how],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in (0, -signal.SIGKILL, 130), done.stderr
    return done.returncode


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("time")
    return rows


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run of each task (3 epochs of 4 or 3 steps)."""
    runs = {}
    for task in ("digits", "strings"):
        runs[task] = tmp_path_factory.mktemp("straight") / task
        assert _script(task, runs[task]) == 0
    return runs


def _compare(straight: Path, resumed: Path, cursor_skip=(), tensor_skip=()) -> None:
    (t1, m1), (t2, m2) = load_checkpoint(straight), load_checkpoint(resumed)
    c1, c2 = m1["cursor"], m2["cursor"]
    for key in ("elapsed", *cursor_skip):  # wall-clock time differs
        c1.pop(key), c2.pop(key)
    assert c1 == c2
    assert set(t1) == set(t2)
    for name in t1:
        if not name.startswith(tensor_skip):
            assert torch.equal(t1[name], t2[name]), name  # weights, Adam, RNGs, best weights


@pytest.mark.parametrize("task", ["digits", "strings"])
def test_sigkill_and_resume_is_bit_identical(tmp_path, straight, task):
    steps = load_checkpoint(straight[task])[1]["cursor"]["step"]
    assert steps == (12 if task == "digits" else 9)
    # mid-epoch or at an epoch's end, with dropout, augmentation, Adam and the batch order
    kill_at = random.SystemRandom().randrange(1, steps)
    killed = tmp_path / "killed"
    assert _script(task, killed, kill_at) == -signal.SIGKILL, f"kill at {kill_at}"
    assert load_checkpoint(killed)[1]["cursor"]["step"] == kill_at
    assert _script(task, killed) == 0
    _compare(straight[task], killed)
    assert _rows(straight[task]) == _rows(killed), f"killed at step {kill_at}"


@pytest.mark.parametrize("task", ["digits", "strings"])
def test_ctrl_c_saves_evaluates_and_resumes_the_same_way(tmp_path, straight, task):
    steps = load_checkpoint(straight[task])[1]["cursor"]["step"]
    # the signal comes after step stop_at's checkpoint; the loop finishes step stop_at + 1
    stop_at = random.SystemRandom().randrange(1, steps - 1)
    run = tmp_path / "interrupted"
    assert _script(task, run, stop_at, "int") == 130, f"SIGINT after step {stop_at}"
    rows = _rows(run)
    assert rows[-1]["kind"] == "valid" and rows[-1]["step"] == stop_at + 1
    assert load_checkpoint(run)[1]["cursor"]["step"] == stop_at + 1
    assert _script(task, run) == 0
    # the training is the same; Ctrl-C's evaluation is one validation row more (and may
    # hold the best score, which then picks other best weights)
    extra = [r for r in _rows(run) if r not in _rows(straight[task])]
    at_epoch_end = (stop_at + 1) % (steps // 3) == 0
    assert [r["step"] for r in extra] == ([] if at_epoch_end else [stop_at + 1])
    assert [r for r in _rows(run) if r not in extra] == _rows(straight[task])
    best = load_checkpoint(run)[1]["cursor"]["best_step"]
    if not extra:
        _compare(straight[task], run)
    elif best == load_checkpoint(straight[task])[1]["cursor"]["best_step"]:
        _compare(straight[task], run, ("stale", "bad_evaluations"))  # the extra evaluation
    else:
        assert best == stop_at + 1
        _compare(straight[task], run, ("stale", "bad_evaluations", "best", "best_step"), ("best.",))
