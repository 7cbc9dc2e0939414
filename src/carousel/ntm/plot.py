"""The paper's Figure 6 for one sequence: inputs, outputs, and the write and read weightings
over the memory locations against time (``carousel plot RUN`` writes ``RUN/memory.png``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from carousel.io import pyplot, save_figure


def _window(used: Tensor, pad: int = 2) -> Tensor:
    """Indices of the shortest circular stretch of locations holding every ``used`` one
    (padded by ``pad`` each side): the complement of the longest circular run of unused."""
    N = used.numel()
    if not bool(used.any()) or bool(used.all()):
        return torch.arange(N)
    idx = used.nonzero().flatten().tolist()
    gaps = [((idx[(i + 1) % len(idx)] - idx[i] - 1) % N, idx[i]) for i in range(len(idx))]
    gap, last = max(gaps)  # the longest run of unused locations starts after ``last``
    first = (last + gap + 1) % N  # the first used location after that run
    length = min(N, N - gap + 2 * pad)
    return (first - pad + torch.arange(length)) % N


def plot_trace(tr: dict[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    """Write the PNG of :func:`carousel.ntm.train.trace`'s ``tr`` to ``path`` (atomically).

    Rows: the inputs (channels × time), the target and the outputs (probabilities), the
    write weightings and the read weightings (locations × time).  As the paper crops its
    figure, only the locations some head weighted by more than 1 % are shown, padded by two,
    in circular order: a head that wraps round from location 0 to N − 1 stays one line.
    """
    plt = pyplot()
    x, target, out = tr["x"].T, tr["target"].T, tr["output"].T
    w = tr["weights"]  # (T, Hd, N)
    R = int(tr["read_heads"])
    reads, writes = w[:, :R].sum(1).T, w[:, R:].sum(1).T  # (N, T): heads of a kind summed
    order = _window(w.amax(dim=(0, 1)) > 0.01)  # the locations shown, in circular order
    reads, writes = reads[order], writes[order]
    lo, hi = int(order[0]), int(order[-1])
    rows = [
        ("inputs", x),
        ("targets", target),
        ("outputs", out),
        ("write weightings", writes),
        ("read weightings", reads),
    ]
    if w.size(1) == R:  # no write heads
        rows = [r for r in rows if r[0] != "write weightings"]
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.6 * len(rows) + 0.6), sharex=True)
    for ax, (name, data) in zip(axes, rows):
        ax.imshow(
            data.numpy(),
            aspect="auto",
            cmap="gray_r",
            vmin=0,
            vmax=1,
            interpolation="nearest",
            origin="lower" if "weight" in name else "upper",
        )
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
        if "weight" in name:
            ax.set_yticks([0, data.size(0) - 1], [str(lo), str(hi)])
        else:
            ax.set_yticks([])
    axes[-1].set_xlabel("time")
    if title:
        axes[0].set_title(title, fontsize=10)
    return save_figure(fig, path, dpi=110)
