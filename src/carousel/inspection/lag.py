"""The long-time-lag picture: what a trained lag model's units do across one sequence.

For the 1997 LSTM on the adding problem the internal state s of the units the read-out uses
jumps at the two marked pairs and then holds its value across the lag, while the input gate
stays shut in between: the constant error carousel at work.  Beside it the Elman RNN's state
(its output h), which has no carousel to hold anything.  :func:`carousel_figure` draws one
column per model over the same sequence.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from carousel.data.tasks import ORDER_SYMBOLS, Batch
from carousel.inspection.figures import _png, _pyplot
from carousel.inspection.record import Recording, record
from carousel.lag.train import LagModel


@torch.no_grad()
def record_lag(model: LagModel, batch: Batch) -> Recording:
    """Every gate, s and h of ``model``'s recurrent layer on ``batch`` (reference path, with
    the batch's lengths)."""
    if not isinstance(model, LagModel):
        raise ValueError(f"record_lag needs a LagModel; got {type(model).__name__}")
    return record(model.rnn, batch.x, lengths=batch.lengths)


def marked_steps(task: str, batch: Batch, sequence: int = 0) -> list[int]:
    """The steps of one sequence that carry what the task asks to remember: the marked pairs
    (adding, multiplication), the X/Y symbols (temporal order) or the symbols to copy."""
    x = batch.x[:, sequence]
    n = int(batch.lengths[sequence])
    if task in ("adding", "multiplication"):
        return [t for t in range(n) if float(x[t, 1]) == 1.0]
    if task in ("order6a", "order6b"):
        relevant = (ORDER_SYMBOLS.index("X"), ORDER_SYMBOLS.index("Y"))
        return [t for t in range(n) if int(x[t].argmax()) in relevant and float(x[t].max()) > 0]
    if task == "copy":
        return list(range(batch.target.size(0)))
    return []


@torch.no_grad()
def readout_units(model: LagModel, rec: Recording, count: int = 3) -> list[int]:
    """The ``count`` units the read-out relies on most: |read-out weight| × the spread over
    the batch of the unit's output at each sequence's last real step."""
    h = rec.final[0] if isinstance(rec.final, tuple) else rec.final  # (1, B, H)
    spread = h[-1].std(dim=0) if h.size(1) > 1 else h[-1].abs()[0]  # (H,)
    weight = model.head.weight.abs().sum(dim=0)  # (H,)
    score = weight * spread
    order = score.argsort(descending=True)[: min(count, score.numel())].tolist()
    return [j for j in order if score[j] > 0] or order[:1]  # units it ignores are left out


def _state_name(rec: Recording) -> str:
    return "s" if "s" in rec.values[0][0] else "h"


@torch.no_grad()
def carousel_figure(
    models: Mapping[str, LagModel],
    batch: Batch,
    sequence: int = 0,
    units: int = 3,
    title: str = "",
) -> bytes:
    """PNG: one column per model (label -> trained :class:`LagModel` of one task), over
    sequence ``sequence`` of ``batch``.  Top: the input (values and markers for adding and
    multiplication, else the active input), the marked steps dashed in every panel.  Middle:
    the state of the ``units`` units the read-out relies on most (the internal state s for
    LSTM cells, h for others).  Bottom: the input gate of the same units, for cells that have
    one.  The panel titles give the model's output and the target for that sequence."""
    if not models:
        raise ValueError("carousel_figure needs at least one model")
    tasks = {m.spec.name for m in models.values()}
    if len(tasks) != 1:
        raise ValueError(f"the models must share one task; got {', '.join(sorted(tasks))}")
    (task,) = tasks
    B = batch.x.size(1)
    if not 0 <= sequence < B:
        raise ValueError(f"sequence must lie in 0..{B - 1}; got {sequence}")
    n = int(batch.lengths[sequence])
    marks = marked_steps(task, batch, sequence)
    steps = torch.arange(n).numpy()
    plt = _pyplot()
    cols = len(models)
    fig, axes = plt.subplots(
        3,
        cols,
        figsize=(5.2 * cols, 7.0),
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": [1, 2, 1.4]},
    )
    for c, (label, model) in enumerate(models.items()):
        model.eval()
        rec = record_lag(model, batch)
        values = rec.values[0][0]
        chosen = readout_units(model, rec, units)
        ax = axes[0][c]
        x = batch.x[:n, sequence]
        if task in ("adding", "multiplication"):
            ax.plot(steps, x[:, 0].numpy(), color="0.4", linewidth=0.8, label="value")
            ax.plot(steps, x[:, 1].numpy(), color="tab:red", linewidth=0.8, label="marker")
            ax.legend(fontsize=7, loc="lower right")
        else:
            ax.plot(steps, x.argmax(dim=1).numpy(), ".", color="0.4", markersize=3)
            ax.set_ylabel("input index", fontsize=8)
        out = model.prediction(model(batch))[sequence]
        shown = f"{float(out):.3f}" if out.dim() == 0 else str(int(out.argmax()))
        target = batch.target[sequence] if batch.target.dim() == 1 else batch.target[:, sequence]
        want = f"{float(target):.3f}" if target.dim() == 0 else str(target.tolist())
        ax.set_title(f"{label}: output {shown}, target {want}", fontsize=9)
        state = _state_name(rec)
        ax = axes[1][c]
        for j in chosen:
            ax.plot(steps, values[state][:n, sequence, j].numpy(), linewidth=1.2, label=f"unit {j}")
        what = "internal state s" if state == "s" else "state h"
        ax.set_ylabel(what, fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        ax = axes[2][c]
        if "i" in values:
            for j in chosen:
                ax.plot(steps, values["i"][:n, sequence, j].numpy(), linewidth=1.0)
            ax.set_ylim(-0.05, 1.05)
            ax.set_ylabel("input gate i", fontsize=9)
        else:
            ax.text(
                0.5,
                0.5,
                "no input gate: every input\nreaches the state",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=9,
                color="0.4",
            )
            ax.set_yticks([])
        ax.set_xlabel("step t")
        for row in axes:
            for t in marks:
                row[c].axvline(t, color="tab:red", linestyle="--", linewidth=0.7, alpha=0.7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def lag_summary(model: LagModel, batch: Batch, rec: Recording | None = None) -> dict[str, Tensor]:
    """Per sequence and unit, over the real steps that are not marked (and not the first):
    ``drift``, the mean |Δ state| per step (s for LSTM cells, else h), and ``gate``, the mean
    input gate (cells that have one); (B, H) each."""
    rec = rec or record_lag(model, batch)
    values = rec.values[0][0]
    state = values[_state_name(rec)]  # (T, B, H)
    T, B = state.shape[:2]
    live = torch.arange(T).unsqueeze(1) < batch.lengths  # (T, B)
    marked = torch.zeros(T, B, dtype=torch.bool)
    for b in range(B):
        for t in marked_steps(model.spec.name, batch, b):
            marked[t, b] = True
    quiet = (live & ~marked)[1:]  # steps t ≥ 1 that are real and unmarked
    delta = (state[1:] - state[:-1]).abs()  # (T − 1, B, H)
    count = quiet.sum(0).clamp_min(1).unsqueeze(1)  # (B, 1)
    out = {"drift": (delta * quiet.unsqueeze(2)).sum(0) / count}
    if "i" in values:
        out["gate"] = (values["i"][1:] * quiet.unsqueeze(2)).sum(0) / count
    return out
