"""``carousel gradflow``: how the error signal decays (or explodes) as it flows back in time.

For a loss at the end of an adding-problem sequence of exactly T steps, measure the mean over
the batch of ‖∂L/∂h_t‖ (and ‖∂L/∂s_t‖, the LSTM's internal state) against the distance T − 1 − t
from the loss, at initialisation and after a short training, by running the cell's reference
step in our own loop with ``retain_grad`` on every state.  The Elman RNN is measured with its
recurrent matrix scaled to a spectral radius below and above 1; the exploding case is also
trained with and without gradient-norm clipping.  Shapes: T, B, I, H as in :mod:`carousel`.

The training between the two measurements, and each run of the clipping comparison, goes
through the shared loop (:func:`fit`) in a temporary run folder (a few minutes inside a
measurement, so not resumed); the loop logs every step's loss and gradient norm before
clipping, and stops a run whose loss or gradient is no longer finite.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carousel.cells import CELLS
from carousel.data.tasks import MIN_T, Batch, adding
from carousel.io import pyplot, save_figure
from carousel.layers import make_layer
from carousel.train import Job, TrainingDiverged, TrainSettings, fit, open_run, read_metrics


@dataclasses.dataclass(frozen=True)
class GradflowConfig:
    """Settings of ``carousel gradflow`` (preset ``gradflow``)."""

    cell: str = "all"  # "all": rnn (both radii), lstm1997, lstm; or one registered cell
    T: int = 200
    hidden_size: int = 32
    batch_size: int = 32
    radius_low: float = 0.9  # spectral radius of the RNN's W_hh, vanishing case
    radius_high: float = 3.0  # exploding case
    train_T: int = 100  # length of the (fixed-length) adding sequences trained on
    train_steps: int = 2500  # minibatches of training before the second measurement
    clip_steps: int = 300  # minibatches of each run of the clipping comparison (at T)
    lr: float = 0.01  # Adam
    sgd_lr: float = 0.1  # plain SGD, in the clipping comparison
    clip: float = 1.0  # clipping used in training (and compared with none for the RNN)
    seed: int = 0
    threads: int = 1
    out: str = "gradflow.png"  # the clipping comparison goes beside it, NAME-clip.png

    def validate(self) -> None:
        if self.cell != "all" and self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; known: all, {', '.join(CELLS)}")
        for name in ("T", "train_T"):
            if getattr(self, name) < MIN_T:
                raise ValueError(f"{name} must be at least {MIN_T}; got {getattr(self, name)}")
        for name in ("hidden_size", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}")
        if (
            min(self.train_steps, self.clip_steps) < 0
            or not min(self.lr, self.sgd_lr, self.clip) > 0
        ):
            raise ValueError(
                "train_steps and clip_steps must be ≥ 0, and lr, sgd_lr and clip positive"
            )
        if not 0 < self.radius_low < 1 < self.radius_high:
            raise ValueError(
                f"need 0 < radius_low < 1 < radius_high; got {self.radius_low}, {self.radius_high}"
            )


@dataclasses.dataclass(frozen=True)
class Setting:
    """One measured network: a cell and, for the RNN, the spectral radius of W_hh."""

    cell: str
    radius: float | None = None

    @property
    def label(self) -> str:
        return self.cell + (f" ρ={self.radius:g}" if self.radius is not None else "")


def settings(cfg: GradflowConfig) -> list[Setting]:
    rnn = [Setting("rnn", cfg.radius_low), Setting("rnn", cfg.radius_high)]
    if cfg.cell == "all":
        return [*rnn, Setting("lstm1997"), Setting("lstm")]
    if cfg.cell == "rnn":
        return rnn
    return [Setting(cfg.cell)]


class Net(nn.Module):
    """A recurrent layer and a linear read-out of the last step."""

    def __init__(self, cell: str, hidden_size: int, radius: float | None = None) -> None:
        super().__init__()
        self.rnn = make_layer(cell, 2, hidden_size)
        self.head = nn.Linear(hidden_size, 1)
        if radius is not None:
            set_spectral_radius(self.rnn.weight_hh_l0, radius)

    def forward(self, x: Tensor) -> Tensor:  # x (T, B, 2) -> (B,)
        out, _ = self.rnn(x)
        return self.head(out[-1]).squeeze(1)


@torch.no_grad()
def set_spectral_radius(w_hh: Tensor, radius: float) -> None:
    """Scale a square recurrent matrix (H, H) in place to spectral radius ``radius``."""
    if w_hh.size(0) != w_hh.size(1):
        raise ValueError(f"spectral radius needs a square W_hh; got {tuple(w_hh.shape)}")
    w_hh.mul_(radius / torch.linalg.eigvals(w_hh).abs().max())


def state_gradients(net: Net, x: Tensor, target: Tensor) -> dict[str, Tensor]:
    """Mean over the batch of ‖∂L/∂state_t‖ for every state ("h", and "c" = s for LSTMs),
    each (T,) in time order; L is the mean squared error at the last step."""
    layer = net.rnn
    cell, w = layer.cell, layer.layer_weights(0)
    T, B = x.size(0), x.size(1)
    gx = F.linear(x, w.w_ih, w.b_ih)  # (T, B, G·H)
    state = tuple(x.new_zeros(B, layer.hidden_size) for _ in cell.state_names)
    kept: list[tuple[Tensor, ...]] = []
    for t in range(T):
        state = cell.step(gx[t], state, w.w_hh, w.b_hh, w.peep)
        for s in state:
            s.retain_grad()
        kept.append(state)
    loss = F.mse_loss(net.head(state[0]).squeeze(1), target)
    net.zero_grad()
    loss.backward()
    net.zero_grad()
    out = {}
    for j, name in enumerate(cell.state_names):
        norms = [
            s[j].grad.norm(dim=1).mean() if s[j].grad is not None else x.new_zeros(()) for s in kept
        ]
        out[name] = torch.stack(norms).detach()
    return out


class AddingJob(Job):
    """Adding sequences of exactly ``T`` steps for the shared loop, ``steps`` batches drawn
    from a generator seeded with ``cfg.seed``; evaluated on the probe batch."""

    kind = "gradflow"
    unit = "MSE"
    item = "seq"

    def __init__(self, cfg: GradflowConfig, probe: Batch, T: int, steps: int) -> None:
        self.cfg, self.probe, self.T, self.steps = cfg, probe, T, steps
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def steps_in_epoch(self, epoch: int) -> int:
        return self.steps

    def batches(self, epoch: int, start: int) -> Iterator[Batch]:
        for _ in range(start, self.steps):
            yield adding(self.cfg.batch_size, self.T, self.gen, fixed_length=True)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, int]:
        return F.mse_loss(model(batch.x), batch.target), self.cfg.batch_size

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"loss": float(F.mse_loss(model(self.probe.x), self.probe.target))}

    def describe(self, scores: dict[str, float]) -> str:
        return f"probe loss (T = {self.cfg.T}) {scores['loss']:.4g}"


@dataclasses.dataclass
class Trace:
    """What one training run did, step by step: the loss and the gradient norm before
    clipping, and the loop's line if it stopped the run as diverged."""

    losses: list[float]
    norms: list[float]
    diverged: str | None = None


def train(net: Net, job: AddingJob, settings: TrainSettings) -> Trace:
    """Train ``net`` on ``job`` through the shared loop in a temporary run folder (a few
    minutes inside a measurement: not resumed); every step is a row of the trace."""
    diverged = None
    with tempfile.TemporaryDirectory(prefix="carousel-gradflow-") as tmp:
        with open_run(Path(tmp) / "run", resume=False) as run:
            try:
                fit(net, job, settings, run, progress=False, echo=None)
            except TrainingDiverged as err:
                diverged = str(err).split(";")[0]
            rows = [r for r in read_metrics(run.metrics) if r["kind"] == "train"]
    return Trace([r["loss"] for r in rows], [r["grad_norm"] for r in rows], diverged)


def train_phase(net: Net, cfg: GradflowConfig, probe: Batch) -> list[float]:
    """``cfg.train_steps`` Adam steps (clipping at ``cfg.clip``) at ``cfg.train_T``; returns
    the loss of every step."""
    settings = TrainSettings(
        lr=cfg.lr, clip=cfg.clip, log_every=1, max_loss_factor=0, seed=cfg.seed, threads=cfg.threads
    )
    return train(net, AddingJob(cfg, probe, cfg.train_T, cfg.train_steps), settings).losses


def clipping_run(net: Net, cfg: GradflowConfig, probe: Batch, sgd: bool, clip: bool) -> Trace:
    """One run of the clipping comparison: ``cfg.clip_steps`` Adam (or plain SGD at
    ``cfg.sgd_lr``) steps at ``cfg.T``, clipping the gradient norm at ``cfg.clip`` or not; the
    loop stops a run whose loss or gradient is no longer finite."""
    settings = TrainSettings(
        optimizer="sgd" if sgd else "adam",
        lr=cfg.sgd_lr if sgd else cfg.lr,
        clip=cfg.clip if clip else 0.0,
        log_every=1,
        max_loss_factor=0,
        seed=cfg.seed,
        threads=cfg.threads,
    )
    return train(net, AddingJob(cfg, probe, cfg.T, cfg.clip_steps), settings)


def run_gradflow(cfg: GradflowConfig, log=print) -> dict:
    """Measure every setting at initialisation and after training; write the PNG(s)."""
    cfg.validate()
    torch.set_num_threads(cfg.threads)
    probe = adding(cfg.batch_size, cfg.T, torch.Generator().manual_seed(cfg.seed + 99), True)
    measured: dict[str, dict[str, dict[str, Tensor]]] = {}
    clip_runs: dict[str, Trace] = {}
    for st in settings(cfg):
        torch.manual_seed(cfg.seed)
        net = Net(st.cell, cfg.hidden_size, st.radius)
        init_state = {k: v.clone() for k, v in net.state_dict().items()}
        before = state_gradients(net, probe.x, probe.target)
        losses = train_phase(net, cfg, probe) if cfg.train_steps else []
        after = state_gradients(net, probe.x, probe.target)
        measured[st.label] = {"init": before, "trained": after}
        log(_row(st.label, before, after, cfg.T, losses))
        if st.cell == "rnn" and st.radius == cfg.radius_high and cfg.clip_steps > 0:
            for sgd in (False, True):
                for clip in (True, False):
                    net.load_state_dict(init_state)
                    name = f"{'SGD' if sgd else 'Adam'}, " + (
                        f"clip {cfg.clip:g}" if clip else "no clipping"
                    )
                    clip_runs[name] = trace = clipping_run(net, cfg, probe, sgd, clip)
                    log(f"  {st.label} trained with {name}: {_clip_summary(trace)}")
    out = Path(cfg.out)
    save_figure(flow_plot(measured, cfg), out, dpi=80)
    log(f"wrote {out}")
    if clip_runs:
        clip_path = out.with_name(out.stem + "-clip" + out.suffix)
        save_figure(clip_plot(clip_runs, cfg), clip_path, dpi=80)
        log(f"wrote {clip_path}")
    return {"measured": measured, "clip": clip_runs}


def _clip_summary(trace: Trace) -> str:
    if trace.diverged:
        end = f"stopped by the loop: {trace.diverged}"
    else:
        last = trace.losses[-20:]
        end = f"mean loss of the last 20 steps {sum(last) / len(last):.4g}"
    return f"{end}; largest gradient norm {max(trace.norms, default=math.nan):.3g}"


def _row(label: str, before: dict, after: dict, T: int, losses: list[float]) -> str:
    picks = [d for d in (0, 10, 50, 100, T - 1) if d < T]
    parts = []
    for name in before:
        b = [f"{float(before[name][T - 1 - d]):.1e}" for d in picks]
        a = [f"{float(after[name][T - 1 - d]):.1e}" for d in picks]
        parts.append(
            f"‖∂L/∂{'s' if name == 'c' else name}‖ init {' '.join(b)} | trained {' '.join(a)}"
        )
    tail = (
        f" (final train loss {sum(losses[-20:]) / max(len(losses[-20:]), 1):.4g})" if losses else ""
    )
    return f"{label}: at distances {picks}: " + "; ".join(parts) + tail


def flow_plot(measured: dict, cfg: GradflowConfig):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, when in zip(axes, ("init", "trained")):
        for color, (label, res) in zip(colors, measured.items()):
            for name, style in (("h", "-"), ("c", "--")):
                if name not in res[when]:
                    continue
                norms = res[when][name].flip(0).clamp_min(1e-30)  # by distance from the loss
                sym = "s" if name == "c" else "h"
                ax.plot(norms, style, color=color, label=f"{label} ‖∂L/∂{sym}_t‖")
        title = (
            "at initialisation"
            if when == "init"
            else f"after {cfg.train_steps} Adam steps of {cfg.batch_size} at T = {cfg.train_T}"
        )
        ax.set(yscale="log", xlabel="distance from the loss, T − 1 − t", title=title)
    axes[0].set_ylabel("mean over the batch")
    axes[1].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Gradient flow on the adding problem, T = {cfg.T}, H = {cfg.hidden_size}")
    fig.tight_layout()
    return fig


def clip_plot(runs: dict, cfg: GradflowConfig):
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    for name, trace in runs.items():
        a.plot(trace.losses, label=name, lw=0.8)
        b.plot(trace.norms, label=name, lw=0.8)
    a.set(yscale="log", xlabel="training step", title="training loss (MSE)")
    b.set(yscale="log", xlabel="training step", title="gradient norm before clipping")
    a.legend(fontsize=8)
    fig.suptitle(
        f"Elman RNN, ρ(W_hh) = {cfg.radius_high:g}, adding problem T = {cfg.T} "
        f"(Adam lr {cfg.lr:g}, SGD lr {cfg.sgd_lr:g}; a curve ends where the run diverged)"
    )
    fig.tight_layout()
    return fig
