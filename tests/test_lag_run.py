"""A lag run's folder through the shared loop: kill -9 at a random step and Ctrl-C, then
``--resume``, give the uninterrupted run's metrics and weights bit for bit; resuming a
finished run changes no file; ``carousel train lag``, ``eval`` and ``plot`` on a lag run; a
sweep run again reads its finished runs instead of training them."""

import dataclasses
import json
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from carousel.checkpoint import load_checkpoint
from carousel.cli import main
from carousel.lag import LagConfig, run_sweep

#: adding at T = 10 with a small window and test set: the criterion tests at steps 308, 363,
#: 366 and 380 (all failing: recent sequences cleared, tests counted), and at the budget's end
TINY = [
    *("--task", "adding", "--T", "10", "--cell", "lstm1997", "--hidden-size", "8"),
    *("--batch-size", "16", "--budget", "6400", "--window", "32", "--test-size", "256"),
    *("--log-every", "1", "--checkpoint-every", "5", "--no-progress"),
]
STEPS = 400

#: run `carousel` with argv; with ``at`` ≥ 0, send ourselves signal ``sig`` inside step ``at``
#: (after its forward pass, before the update: whatever the last checkpoint missed is lost)
SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from carousel.cli import main
    from carousel.lag.train import LagJob

    sig, at, argv = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
    loss = LagJob.loss

    def signalling(self, model, batch):
        out = loss(self, model, batch)
        if self.seen == at * self.cfg.batch_size:
            os.kill(os.getpid(), sig)
        return out

    LagJob.loss = signalling
    sys.exit(main(argv))
    """
)


def _carousel(argv, sig=signal.SIGKILL, at=-1):
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(int(sig)), str(at), json.dumps([str(a) for a in argv])],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _rows(run: Path, kind: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("time")
    return [r for r in rows if kind is None or r["kind"] == kind]


def _same_training(a: Path, b: Path, *unlike: str) -> None:
    """Bit-identical checkpoints (every tensor: weights, Adam, RNGs, the batch generator,
    the criterion's window) and cursors, but for the time measured (and ``unlike``)."""
    (t1, m1), (t2, m2) = load_checkpoint(a), load_checkpoint(b)
    for m in (m1, m2):
        m["job_state"].pop("test_seconds")
        for key in ("elapsed", *unlike):
            m["cursor"].pop(key)
    assert m1["cursor"] == m2["cursor"] and m1["job_state"] == m2["job_state"]
    assert set(t1) == set(t2)
    for name in t1:
        assert torch.equal(t1[name], t2[name]), name
    r1, r2 = (json.loads((f / "result.json").read_text()) for f in (a, b))
    r1.pop("wall_s"), r2.pop("wall_s")
    assert r1 == r2


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("lag") / "straight"
    done = _carousel(["train", "lag", "--out", run, *TINY])
    assert done.returncode == 0, done.stderr
    assert "not solved within the budget of 6,400 training sequences" in done.stdout
    assert load_checkpoint(run)[1]["cursor"]["step"] == STEPS
    return run


def test_sigkill_at_a_random_step_and_resume_is_bit_identical(tmp_path, straight):
    run, at = tmp_path / "killed", random.randint(6, STEPS)  # after the first checkpoint
    first = _carousel(["train", "lag", "--out", run, *TINY], signal.SIGKILL, at)
    assert first.returncode == -signal.SIGKILL, (at, first.stderr)
    # the last checkpoint before step `at`: every 5 steps, and at each test
    saved = [s for s in range(at) if s % 5 == 0] + [r["step"] for r in _rows(straight, "valid")]
    assert load_checkpoint(run)[1]["cursor"]["step"] == max(s for s in saved if s < at), at
    second = _carousel(["train", "lag", "--resume", run])
    assert second.returncode == 0, (at, second.stderr)
    _same_training(straight, run)
    assert _rows(straight) == _rows(run), at  # every training loss and test


def test_ctrl_c_saves_and_resumes_the_same_way(tmp_path, straight):
    run, at = tmp_path / "interrupted", 333  # between the criterion's first and second tests
    first = _carousel(["lag", "--out", run, *TINY], signal.SIGINT, at)
    assert first.returncode == 130 and "carousel lag: interrupted" in first.stderr, first.stderr
    assert load_checkpoint(run)[1]["cursor"]["step"] == at
    assert _rows(run)[-1] == {**_rows(run)[-1], "kind": "valid", "step": at}  # tested, saved
    second = _carousel(["lag", "--resume", run])
    assert second.returncode == 0, second.stderr
    _same_training(straight, run, "best", "best_step", "stale", "bad_evaluations")  # one test more
    extra = [r for r in _rows(run, "valid") if r["step"] == at]
    assert _rows(straight, "train") == _rows(run, "train") and len(extra) == 1
    assert _rows(straight, "valid") == [r for r in _rows(run, "valid") if r["step"] != at]


def _files(run: Path) -> dict:  # the lock file is the run's bookkeeping: it names its process
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.name != ".lock"
    }


def test_resuming_a_finished_run_changes_no_file(tmp_path, straight, capsys):
    before = _files(straight)
    assert main(["train", "lag", "--resume", str(straight)]) == 0
    out = capsys.readouterr().out
    assert f"{straight}: finished (done at step {STEPS}); nothing to do" in out
    assert "not solved within the budget of 6,400 training sequences" in out
    assert _files(straight) == before
    # a solved run: temporal order with the 1997 paper's gate biases, solved at step 124
    solved = tmp_path / "solved"
    argv = [*TINY, "--task", "order6a", "--test-size", "512", "--input-gate-bias", "-2"]
    assert main(["train", "lag", "--out", str(solved), *argv, "--output-gate-bias", "-2"]) == 0
    assert "solved after 1,984 training sequences" in capsys.readouterr().out
    before = _files(solved)
    assert main(["lag", "--resume", str(solved)]) == 0
    out = capsys.readouterr().out
    assert "finished (solved at step 124); nothing to do" in out and "solved after 1,984" in out
    assert _files(solved) == before


def test_eval_and_plot_a_lag_run(straight, tmp_path, capsys):
    assert main(["eval", str(straight)]) == 0
    result = json.loads((straight / "result.json").read_text())
    out = capsys.readouterr().out
    assert f"test: {result['test_wrong']} of 256 sequences wrong" in out
    assert "not solved within the budget of 6,400" in out and result["test_wrong"] > 0
    assert main(["eval", str(straight), "--data", "x"]) == 2
    assert "generated from its seed" in capsys.readouterr().err
    assert main(["plot", str(straight), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_new_runs_get_their_own_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["lag", "--T", "10", "--hidden-size", "4", "--budget", "32", "--no-progress"]
    assert main(argv) == 0 and main(argv) == 0
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["lag-adding-T10-lstm1997-seed0", "lag-adding-T10-lstm1997-seed0-2"]
    for name in runs:
        assert {"checkpoint.safetensors", "metrics.jsonl", "curves.png", "result.json"} <= {
            p.name for p in (tmp_path / "runs" / name).iterdir()
        }
    capsys.readouterr()
    assert main(["train", "lag", "--out", "runs/" + runs[0], *argv[1:]]) == 2  # named: refused
    assert "already holds a checkpoint" in capsys.readouterr().err


def test_a_sweep_run_again_reads_its_finished_runs(tmp_path):
    cfg = LagConfig(sweep_T="10", sweep_cells="rnn,gru", sweep_seeds=1, budget=64, hidden_size=4)
    first = run_sweep(cfg, tmp_path, log=lambda _m: None)
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == [
        "adding-T10-gru-seed0",
        "adding-T10-rnn-seed0",
    ]
    done = _files(runs / "adding-T10-rnn-seed0")
    # cut short before the second run: its folder is not there yet
    for p in (runs / "adding-T10-gru-seed0").iterdir():
        p.unlink()
    (runs / "adding-T10-gru-seed0").rmdir()
    again = run_sweep(cfg, tmp_path, log=lambda _m: None)
    assert _files(runs / "adding-T10-rnn-seed0") == done  # read, not trained again
    assert [r.test_wrong for r in again] == [r.test_wrong for r in first]
    assert [r.sequences for r in again] == [r.sequences for r in first]
    with pytest.raises(ValueError, match=r"cannot resume .* with budget=96"):
        run_sweep(dataclasses.replace(cfg, budget=96), tmp_path, log=lambda _m: None)
