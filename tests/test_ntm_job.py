"""The ``ntm`` job through the shared loop: a short copy run whose cost falls, exact resume,
``carousel eval RUN --length ...``, ``carousel plot RUN``, presets per task."""

from __future__ import annotations

import json

import pytest
import torch

from carousel.checkpoint import load_checkpoint
from carousel.cli import main
from carousel.config import resolve_config
from carousel.ntm.config import NTMConfig
from carousel.ntm.train import NTMJob, load_ntm, train_ntm

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "controller_size": 16,
    "memory_size": 12,
    "memory_width": 6,
    "min_length": 1,
    "max_length": 3,
    "batch_size": 8,
    "epoch_sequences": 64,
    "eval_sequences": 32,
    "eval_batch_size": 32,
    "log_every": 2,
    "threads": 1,
}


def tiny(**kw) -> NTMConfig:
    return resolve_config(NTMConfig, "ntm-copy", {**TINY, **kw})


def test_short_copy_run_cost_falls(tmp_path):
    cfg = tiny(epochs=5, lr=1e-3)  # the preset's RMSProp, momentum 0.9: steps ~1e-2
    summary = train_ntm(cfg, tmp_path / "run", progress=False)
    assert summary["reason"] == "done" and summary["seen"] == 5 * 64
    text = (tmp_path / "run" / "metrics.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines()]
    evals = [r for r in rows if "bits_per_sequence" in r]
    assert len(evals) == 5
    first, last = evals[0], evals[-1]
    assert last["bits_per_sequence"] < first["bits_per_sequence"]
    assert last["bit_errors"] < 0.8 * first["bit_errors"]  # seen: 8.25 -> 5.66
    assert all(torch.isfinite(torch.tensor(r["bits_per_sequence"])) for r in evals)


def test_resume_is_bit_identical(tmp_path):
    cfg = tiny(epochs=1, epoch_sequences=48)  # 6 steps
    train_ntm(cfg, tmp_path / "straight", progress=False)
    train_ntm(NTMConfig(**{**cfg.__dict__, "max_steps": 3}), tmp_path / "halves", progress=False)
    train_ntm(None, tmp_path / "halves", resume=True, overrides={"max_steps": None}, progress=False)
    a, _ = load_checkpoint(tmp_path / "straight")
    b, _ = load_checkpoint(tmp_path / "halves")
    assert any(k.startswith("model.") for k in a) and sorted(a) == sorted(b)
    for k in a:  # model, optimizer, RNG states
        # the best weights may differ: the stop at step 3 evaluated there too, and an
        # evaluation of the interrupted run can be its best
        if not k.startswith("best."):
            assert torch.equal(a[k], b[k]), k


def test_ends_with_the_best_evaluation_and_stops_when_solved(tmp_path):
    cfg = tiny(epochs=4, lr=1e-2)  # seen: 16.898, 16.117 (best), 16.759, 16.405 bits/seq
    summary = train_ntm(cfg, tmp_path / "run", progress=False)
    rows = (tmp_path / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    cost = [json.loads(r)["bits_per_sequence"] for r in rows if "bit_errors" in json.loads(r)]
    assert len(cost) == 4 and summary["best"] == min(cost) != cost[-1]
    model, _, meta = load_ntm(tmp_path / "run")
    again = NTMJob(cfg, torch.device("cpu")).evaluate(model)
    assert again["bits_per_sequence"] == min(cost)  # the best weights, not the last
    assert meta["cursor"]["best_step"] == 8 * (1 + cost.index(min(cost)))
    # an evaluation under solved_below ends the run, whatever the budget
    summary = train_ntm(tiny(epochs=4, solved_below=100.0), tmp_path / "solved", progress=False)
    assert summary["reason"] == "solved" and summary["seen"] == 64


def test_lstm_baseline_through_the_same_job(tmp_path):
    cfg = resolve_config(
        NTMConfig, "ntm-copy-lstm", {**TINY, "lstm_size": 8, "lstm_layers": 2, "epochs": 1}
    )
    summary = train_ntm(cfg, tmp_path / "lstm", progress=False)
    assert summary["reason"] == "done" and "bit_errors" in summary["scores"]


def test_cli_train_eval_plot(tmp_path, capsys):
    run = tmp_path / "cli"
    args = ["train", "ntm", "--task", "copy", "--out", str(run), "--no-progress", "--epochs", "1"]
    for k, v in TINY.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "trained 64 sequences" in out
    assert main(["eval", str(run), "--length", "2,5", "--sequences", "16"]) == 0
    out = capsys.readouterr().out
    assert "length    2:" in out and "length    5:" in out and "bit errors/seq" in out
    assert main(["plot", str(run)]) == 0
    assert (run / "memory.png").stat().st_size > 1000 and (run / "curves.png").exists()


def test_presets_per_task():
    for task in ("copy", "repeat-copy", "associative-recall", "priority-sort"):
        cfg = resolve_config(NTMConfig, f"ntm-{task}")
        assert cfg.task == task and cfg.model == "ntm"
        assert (cfg.memory_size, cfg.memory_width, cfg.controller_size) == (128, 20, 100)
    assert resolve_config(NTMConfig, "ntm-priority-sort").read_heads == 5
    base = resolve_config(NTMConfig, "ntm-copy-lstm")
    assert (base.model, base.lstm_size, base.lstm_layers) == ("lstm", 256, 3)
    copy = resolve_config(NTMConfig, "ntm-copy")
    assert copy.epochs * copy.epoch_sequences == 60_000
    assert (copy.optimizer, copy.lr, copy.momentum) == ("rmsprop", 3e-4, 0.9)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"task": "sorting"}, "unknown memory task"),
        ({"model": "gpt"}, "model must be one of ntm, lstm"),
        ({"memory_init": "zero"}, "memory_init must be one of"),
        ({"min_length": 5, "max_length": 2}, "min_length must be ≤ max_length"),
        ({"controller": "tcn"}, "unknown cell"),
    ],
)
def test_bad_settings(overrides, match):
    with pytest.raises(ValueError, match=match):
        resolve_config(NTMConfig, "ntm-copy", overrides)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "ntm", "--task", "sorting", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown" in err


def test_plot_window_is_circular():
    from carousel.ntm.plot import _window

    used = torch.zeros(128, dtype=torch.bool)
    used[[0, 1, 126, 127]] = True  # a head that wrapped round from 0 to 127
    assert _window(used).tolist() == [124, 125, 126, 127, 0, 1, 2, 3]
    used = torch.zeros(10, dtype=torch.bool)
    used[[3, 5]] = True
    assert _window(used).tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert _window(torch.zeros(5, dtype=torch.bool)).tolist() == [0, 1, 2, 3, 4]
