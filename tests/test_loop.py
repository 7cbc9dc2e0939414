"""The shared training loop on a toy job: clipping, the schedule, early stopping, the
divergence stop, max_minutes with an injected clock, best-model selection, the run folder's
lock, resuming a finished run, and logs without a terminal."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from carousel.checkpoint import load_checkpoint
from carousel.train import (
    Job,
    RunInUse,
    TrainingDiverged,
    TrainSettings,
    clip_gradients,
    fit,
    make_optimizer,
    open_run,
    read_metrics,
    setup,
)


@dataclasses.dataclass(frozen=True)
class ToyConfig(TrainSettings):
    n: int = 32  # examples
    batch_size: int = 8


class ToyJob(Job):
    """Regression of y = 3x on fixed data; evaluation scores a list of values in turn when
    ``scripted`` is given (to drive early stopping and best-model selection)."""

    kind = "toy"

    def __init__(self, cfg: ToyConfig, scripted: list[float] | None = None) -> None:
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(cfg.n, 1, generator=gen)
        self.y = 3 * self.x
        self.cfg, self.scripted, self.evaluations = cfg, scripted, 0

    def steps_in_epoch(self, epoch):
        return self.cfg.n // self.cfg.batch_size

    def batches(self, epoch, start):
        order = torch.randperm(self.cfg.n, generator=torch.Generator().manual_seed(epoch))
        for k in range(start, self.steps_in_epoch(epoch)):
            rows = order[k * self.cfg.batch_size : (k + 1) * self.cfg.batch_size]
            yield self.x[rows], self.y[rows]

    def loss(self, model, batch):
        x, y = batch
        return nn.functional.mse_loss(model(x), y), len(x)

    def evaluate(self, model):
        self.evaluations += 1
        if self.scripted is not None:
            return {"loss": self.scripted[self.evaluations - 1]}
        return {"loss": float(nn.functional.mse_loss(model(self.x), self.y))}


def _fit(tmp_path, cfg, job=None, resume=False, **kw):
    with open_run(tmp_path / "run", resume=resume, kind="toy") as run:
        cfg = run.settings(ToyConfig, cfg, kw.pop("overrides", None))
        setup(cfg)
        model = nn.Linear(1, 1)
        return model, fit(model, job or ToyJob(cfg), cfg, run, progress=False, **kw)


def test_a_toy_job_learns_and_logs(tmp_path):
    cfg = ToyConfig(lr=0.1, epochs=20, log_every=2)
    model, out = _fit(tmp_path, cfg)
    assert out["reason"] == "done" and out["step"] == 80 and out["seen"] == 640
    assert abs(model.weight.item() - 3) < 0.05
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows if r["kind"] == "valid"] == list(range(4, 81, 4))
    assert rows[-1]["loss"] < 1e-2 and (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_clip_gradients_caps_the_norm_and_reports_it():
    model = nn.Linear(3, 1)
    for p in model.parameters():
        p.grad = torch.full_like(p, 10.0)
    before = clip_gradients(model, 1.0)
    assert before == pytest.approx(20.0)  # four entries of 10
    after = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert float(after) == pytest.approx(1.0, rel=1e-5)
    assert clip_gradients(model, 0) == pytest.approx(1.0, rel=1e-5)  # 0: measured, not clipped


def test_clip_gradients_measures_finite_gradients_beyond_float32s_squares():
    # an exploding RNN's gradients: finite, but their squares overflow float32
    model = nn.Linear(3, 1)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e21)
    assert clip_gradients(model, 1.0) == pytest.approx(2e21)
    after = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert float(after) == pytest.approx(1.0, rel=1e-5)
    model.bias.grad = torch.tensor([math.nan])
    assert math.isnan(clip_gradients(model, 1.0))  # a gradient that is not finite stays so


def test_the_learning_rate_schedule_decays_per_epoch(tmp_path):
    cfg = ToyConfig(lr=0.1, lr_decay=0.5, decay_after=2, epochs=4, log_every=4)
    _fit(tmp_path, cfg)
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["lr"] for r in rows] == [0.1, 0.1, 0.05, 0.025]


def test_the_cosine_schedule_is_torchs_cosine_annealing_stepped_per_epoch(tmp_path):
    cfg = ToyConfig(lr=0.1, lr_schedule="cosine", epochs=5, log_every=4)
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    torch_lrs = []
    for _ in range(cfg.epochs):
        torch_lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert [cfg.lr_at(e) for e in range(5)] == pytest.approx(torch_lrs, rel=1e-12)
    _fit(tmp_path, cfg)
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["lr"] for r in rows] == [cfg.lr_at(e) for e in range(5)]
    with pytest.raises(ValueError, match="lr_schedule must be"):
        ToyConfig(lr_schedule="linear").validate()


def test_warm_up_raises_the_learning_rate_linearly_then_the_schedule_takes_over(tmp_path):
    cfg = ToyConfig(lr=0.1, lr_decay=0.5, warmup_steps=6, epochs=3, log_every=1)
    _fit(tmp_path, cfg)
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    expected = [0.1 * k / 6 for k in range(1, 5)] + [0.05 * 5 / 6, 0.05] + [0.05] * 2 + [0.025] * 4
    assert [r["lr"] for r in rows] == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="warmup_steps must be at least 0"):
        ToyConfig(warmup_steps=-1).validate()


def test_the_plateau_schedule_decays_after_each_evaluation_that_is_not_the_best(tmp_path):
    cfg = ToyConfig(lr=0.1, lr_schedule="plateau", lr_decay=0.5, epochs=5, log_every=4)
    _fit(tmp_path, cfg, job=ToyJob(cfg, scripted=[3.0, 2.0, 2.5, 1.0, 4.0]))
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    # epoch 3 follows the worse 2.5; epoch 4's 1.0 is a new best, so epoch 5 keeps 0.05
    assert [r["lr"] for r in rows] == [0.1, 0.1, 0.1, 0.05, 0.05]


def test_early_stopping_and_the_best_model(tmp_path):
    cfg = ToyConfig(lr=0.1, epochs=10, patience=2)

    class Best(ToyJob):
        keep_best = True

    job = Best(cfg, scripted=[5.0, 3.0, 4.0, 6.0, 1.0])
    model, out = _fit(tmp_path, cfg, job)
    assert out["reason"] == "early_stop" and out["epoch"] == 4 and out["best_step"] == 8
    tensors, meta = load_checkpoint(tmp_path / "run")
    assert meta["cursor"]["stopped"] == "early_stop"
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    assert torch.equal(model.weight, best["weight"])  # the model ends at its best weights
    assert not torch.equal(tensors["model.weight"], best["weight"])


def test_a_nan_loss_stops_with_one_clear_error_keeping_the_last_checkpoint(tmp_path):
    cfg = ToyConfig(lr=0.01, epochs=3, checkpoint_every=1)

    class Breaks(ToyJob):
        def loss(self, model, batch):
            loss, n = super().loss(model, batch)
            return (loss * math.nan if self.calls_left() else loss), n

        calls = 0

        def calls_left(self):
            self.calls += 1
            return self.calls > 6

    with pytest.raises(TrainingDiverged, match="loss became nan at step 7") as err:
        _fit(tmp_path, cfg, Breaks(cfg))
    assert "last good checkpoint" in str(err.value)
    assert load_checkpoint(tmp_path / "run")[1]["cursor"]["step"] == 6


def test_a_loss_far_above_its_start_is_divergence(tmp_path):
    cfg = ToyConfig(lr=10.0, clip=0.0, epochs=50, optimizer="sgd")
    with pytest.raises(TrainingDiverged, match="over 100× its largest value in the first 10"):
        _fit(tmp_path, cfg)


def test_one_easy_first_batch_is_not_the_start_of_divergence(tmp_path):
    """A warm-started run whose first batch happens to be easy: its second loss is 200× the
    first, within the first 10 steps, and the run goes on; the same jump at step 11 after
    the ten losses is divergence."""

    class EasyFirst(ToyJob):
        calls = 0

        def loss(self, model, batch):
            loss, n = super().loss(model, batch)
            self.calls += 1
            scale = 1e-3 if self.calls == 1 else (1e3 if self.calls == 12 else 1.0)
            return loss * scale, n

    cfg = ToyConfig(epochs=5, max_steps=8)
    _, out = _fit(tmp_path, cfg, EasyFirst(cfg))
    assert out["reason"] == "max_steps" and out["step"] == 8

    cfg = ToyConfig(epochs=50, max_steps=20)
    with pytest.raises(TrainingDiverged, match="in the first 10 steps"):
        _fit(tmp_path / "late", cfg, EasyFirst(cfg))


def test_max_minutes_uses_training_time(tmp_path):
    ticks = iter(range(10_000))
    cfg = ToyConfig(epochs=100, max_minutes=0.5)  # 30 s; the clock says each step takes 5 s
    _, out = _fit(tmp_path, cfg, clock=lambda: 5 * next(ticks))
    assert out["reason"] == "max_minutes" and out["step"] == 6 and out["elapsed"] == 30


def test_resuming_a_finished_run_changes_nothing(tmp_path, capsys):
    _fit(tmp_path, ToyConfig(epochs=2))
    run = tmp_path / "run"

    def files():  # the lock file is the run's own bookkeeping: it names the process holding it
        return {
            p.name: (p.read_bytes(), p.stat().st_mtime_ns)
            for p in run.iterdir()
            if p.name != ".lock"
        }

    before = files()
    _, out = _fit(tmp_path, None, resume=True)
    assert (
        out["reason"] == "done"
        and "finished (done at step 8); nothing to do" in capsys.readouterr().out
    )
    assert files() == before
    _, out = _fit(tmp_path, None, resume=True, overrides={"epochs": 3})  # a longer run goes on
    assert out["step"] == 12


def test_a_finished_runs_resume_ends_at_the_best_weights_and_echo_none_is_quiet(tmp_path, capsys):
    cfg = ToyConfig(lr=0.1, epochs=3)

    class Best(ToyJob):
        keep_best = True

    _fit(tmp_path, cfg, Best(cfg, scripted=[1.0, 5.0, 6.0]), echo=None)  # best: the first
    assert capsys.readouterr().out == ""
    tensors, _ = load_checkpoint(tmp_path / "run")
    model, out = _fit(tmp_path, None, Best(cfg), resume=True, echo=None)
    assert out["reason"] == "done" and capsys.readouterr().out == ""
    assert torch.equal(model.weight, tensors["best.weight"])
    assert not torch.equal(model.weight, tensors["model.weight"])


def test_resume_refuses_a_changed_setting(tmp_path):
    _fit(tmp_path, ToyConfig(epochs=1))
    with pytest.raises(ValueError, match=r"cannot resume .* with lr=0.5"):
        _fit(tmp_path, None, resume=True, overrides={"lr": 0.5})


def test_rmsprop_with_momentum_is_torchs_and_resumes_exactly(tmp_path):
    cfg = ToyConfig(optimizer="rmsprop", lr=0.01, momentum=0.9, rmsprop_alpha=0.95, epochs=4)
    params = [nn.Parameter(torch.ones(3))]
    opt = make_optimizer(params, cfg.optimizer, cfg.lr, momentum=0.9, alpha=0.95)
    assert isinstance(opt, torch.optim.RMSprop)
    assert (opt.defaults["momentum"], opt.defaults["alpha"]) == (0.9, 0.95)
    straight, _ = _fit(tmp_path / "a", cfg)
    _fit(tmp_path / "b", dataclasses.replace(cfg, max_steps=6))  # stops mid-epoch 2 of 4
    _, meta = load_checkpoint(tmp_path / "b" / "run")
    saved = json.dumps(meta["optimizer"])  # RMSProp's state and settings are checkpointed
    assert all(k in saved for k in ('"momentum_buffer"', '"square_avg"', '["alpha", 0.95]'))
    resumed, out = _fit(tmp_path / "b", None, resume=True, overrides={"max_steps": None})
    assert out["step"] == 16 and torch.equal(resumed.weight, straight.weight)
    assert torch.equal(resumed.bias, straight.bias)
    # momentum changes the run: without it the weights differ
    plain, _ = _fit(tmp_path / "c", dataclasses.replace(cfg, momentum=0.0))
    assert not torch.equal(plain.weight, straight.weight)
    # and so does a larger ε, which reaches the optimizer's settings in the checkpoint
    wide, _ = _fit(tmp_path / "d", dataclasses.replace(cfg, optimizer_eps=0.1))
    assert not torch.equal(wide.weight, straight.weight)
    _, meta = load_checkpoint(tmp_path / "d" / "run")
    assert '["eps", 0.1]' in json.dumps(meta["optimizer"])


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"optimizer": "adagrad"}, "optimizer must be one of sgd, adam, rmsprop; got 'adagrad'"),
        ({"optimizer_eps": 0.0}, "optimizer_eps must be positive; got 0.0"),
        ({"optimizer": "rmsprop", "momentum": 1.0}, r"momentum must be in \[0, 1\); got 1.0"),
        ({"optimizer": "adam", "momentum": 0.9}, "momentum is for sgd and rmsprop, not adam"),
        ({"optimizer": "rmsprop", "rmsprop_alpha": 0.0}, r"rmsprop_alpha must be in \(0, 1\)"),
    ],
)
def test_optimizer_settings_are_checked(bad, message):
    with pytest.raises(ValueError, match=message):
        ToyConfig(**bad).validate()


def test_a_run_folder_in_use_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import fcntl, os, sys, time
                fd = os.open({str(run / ".lock")!r}, os.O_RDWR | os.O_CREAT)
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, b"%d\\n" % os.getpid())
                print("locked", flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            RunInUse, match=f"in use by another training \\(process {holder.pid}\\)"
        ):
            _fit(tmp_path, ToyConfig())
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing else written
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    _fit(tmp_path, ToyConfig())  # a killed holder leaves no stale lock


def test_the_lock_is_held_while_training(tmp_path):
    seen = []

    def probe(step):
        fd = os.open(tmp_path / "run" / ".lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append("free")
        except BlockingIOError:
            seen.append("held")
        finally:
            os.close(fd)

    # flock locks belong to the open file description, so a second open in the same
    # process conflicts with the loop's lock just as another process would
    _fit(tmp_path, ToyConfig(epochs=2), on_checkpoint=probe)
    assert seen == ["held", "held"]


def test_without_a_terminal_progress_is_a_plain_line(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_loop import ToyConfig, ToyJob
        from carousel.train import Progress
        p = Progress(total=3, initial=0, enabled=True, every=0.0)
        for _ in range(3):
            p.update("loss 1.0")
        p.close()
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [f"step {k}/3  loss 1.0" for k in (1, 2, 3)]


def test_the_job_is_asked_after_every_step_even_when_an_evaluation_is_due(tmp_path):
    cfg = ToyConfig(epochs=2, eval_every=1)

    class Asks(ToyJob):
        asked = 0

        def wants_evaluation(self):
            self.asked += 1
            return False

    job = Asks(cfg)
    _, out = _fit(tmp_path, cfg, job)
    assert out["step"] == 8 and job.asked == 8 and job.evaluations == 8


def test_compare_runs_draws_each_runs_validation_score(tmp_path, capsys):
    from carousel.cli import main
    from carousel.train import compare_runs

    _fit(tmp_path / "a", ToyConfig(lr=0.1, epochs=3), echo=None)
    _fit(tmp_path / "b", ToyConfig(lr=0.01, epochs=2), echo=None)
    rows = read_metrics(tmp_path / "a" / "run" / "metrics.jsonl")
    valid = [r for r in rows if r["kind"] == "valid"]
    assert [r["seen"] for r in valid] == [32, 64, 96]  # items trained, for --x seen
    runs = [tmp_path / "a" / "run", tmp_path / "b" / "run"]
    png = compare_runs(runs, tmp_path / "c.png", x="seen", log_y=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    with pytest.raises(ValueError, match=r"metrics.jsonl holds no validation 'accuracy'"):
        compare_runs(runs, tmp_path / "d.png", metric="accuracy")
    assert not (tmp_path / "d.png").exists()
    out = str(tmp_path / "e.png")
    assert main(["compare", *map(str, runs), "--x", "time", "--out", out]) == 0
    assert capsys.readouterr().out.strip() == out
    assert main(["compare", str(runs[0]), "--x", "epoch", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "x must be one of step, seen, time; got 'epoch'" in err
