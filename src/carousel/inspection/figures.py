"""PNG figures of a recording (matplotlib, Agg): the gate-saturation scatter of Karpathy,
Johnson & Fei-Fei (2015, Fig. 3) and a heatmap of chosen units over a stretch of text."""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch
from torch import Tensor

from carousel.inspection.features import Unit
from carousel.inspection.record import SIGMOID_GATES, Recording
from carousel.io import pyplot as _pyplot

#: below LEFT a gate is left-saturated (shut), above RIGHT right-saturated (open)
LEFT, RIGHT = 0.1, 0.9
GATE_COLOURS = {
    "i": "tab:green",
    "f": "tab:blue",
    "o": "tab:red",
    "r": "tab:purple",
    "z": "tab:orange",
}
GATE_NAMES = {"i": "input", "f": "forget", "o": "output", "r": "reset", "z": "update"}


def _png(fig, dpi: int = 100) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def saturation(values: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per unit, the fraction of steps a gate (T, B, H) spends left-saturated (< 0.1) and
    right-saturated (> 0.9), over every real step (those within ``lengths``): two (H,)."""
    T, B = values.shape[:2]
    if lengths is None:
        live = torch.ones(T, B, dtype=torch.bool, device=values.device)
    else:
        live = torch.arange(T, device=values.device).unsqueeze(1) < lengths.to(values.device)
    live = live.unsqueeze(2)  # (T, B, 1)
    n = live.sum().clamp_min(1)
    left = ((values < LEFT) & live).sum((0, 1)) / n
    right = ((values > RIGHT) & live).sum((0, 1)) / n
    return left.double(), right.double()


def saturation_plot(rec: Recording, title: str = "") -> bytes:
    """One panel per layer (and direction): one dot per unit and sigmoid gate, the fraction of
    steps left-saturated (x) against right-saturated (y).  A cell without sigmoid gates (the
    Elman RNN) has nothing to show and is an error."""
    panels = [
        (k, d, [g for g in rec.values[k][d] if g in SIGMOID_GATES])
        for k in range(rec.num_layers)
        for d in range(rec.num_directions)
    ]
    if not any(g for _, _, g in panels):
        raise ValueError("the saturation plot needs a cell with sigmoid gates (LSTM or GRU)")
    plt = _pyplot()
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 0.4, 3.9), squeeze=False)
    for ax, (k, d, gates) in zip(axes[0], panels):
        for g in gates:
            left, right = saturation(rec.values[k][d][g], rec.lengths)
            ax.scatter(
                left.numpy(),
                right.numpy(),
                s=9,
                alpha=0.6,
                color=GATE_COLOURS[g],
                label=f"{GATE_NAMES[g]} gate {g}",
                edgecolors="none",
            )
        ax.plot([0, 1], [1, 0], color="0.6", linewidth=0.8)
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), aspect="equal")
        ax.set_title(f"layer {k + 1}" + (" backward" if d else ""), fontsize=10)
        ax.set_xlabel(f"fraction left-saturated (< {LEFT})")
        if ax is axes[0][0]:
            ax.set_ylabel(f"fraction right-saturated (> {RIGHT})")
        ax.legend(fontsize=7, loc="upper right", markerscale=1.5)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def heatmap_plot(
    text: str,
    rec: Recording,
    units: Sequence[Unit],
    start: int = 0,
    length: int = 120,
    batch: int = 0,
    title: str = "",
) -> bytes:
    """Rows: ``units`` (signal and index, with the feature and r they were ranked by); columns:
    the characters ``text[start : start + length]``; colour: the unit's value, scaled as on
    the page (gates 0..1, s by the unit's largest |s| over the stretch, others −1..1)."""
    if not units:
        raise ValueError("the heatmap needs at least one unit")
    stop = min(start + length, len(text))
    if not 0 <= start < stop:
        raise ValueError(f"start must lie in 0..{len(text) - 1}; got {start}")
    signals = dict(rec.signals())
    rows, names = [], []
    for u in units:
        if u.signal not in signals:
            raise ValueError(f"no signal {u.signal!r} in this recording")
        v = signals[u.signal][start:stop, batch, u.unit].double()
        kind = u.signal.split()[-1]
        if kind in SIGMOID_GATES:
            v = 2 * v - 1
        elif kind == "s":
            v = v / v.abs().max().clamp_min(1e-12)
        rows.append(v)
        names.append(f"{u.name()}  {u.feature} r={u.r:+.2f}")
    grid = torch.stack(rows).numpy()
    plt = _pyplot()
    width = max(6.0, 0.11 * (stop - start) + 3.5)
    fig, ax = plt.subplots(figsize=(width, 0.32 * len(units) + 1.6))
    ax.imshow(grid, aspect="auto", cmap="coolwarm", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    shown = ["⏎" if ch == "\n" else ("␣" if ch == " " else ch) for ch in text[start:stop]]
    ax.set_xticks(range(len(shown)), shown, fontsize=6, fontfamily="monospace")
    ax.tick_params(axis="x", length=0)
    ax.set_xlabel(f"characters {start}–{stop - 1} (⏎ newline, ␣ space)")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


__all__ = ["heatmap_plot", "saturation", "saturation_plot"]
