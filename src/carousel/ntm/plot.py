"""The paper's Figure 6 for one sequence: inputs, outputs, and the write and read weightings
over the memory locations against time (``carousel plot RUN`` writes ``RUN/memory.png``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from carousel.io import pyplot, save_figure


def plot_trace(tr: dict[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    """Write the PNG of :func:`carousel.ntm.train.trace`'s ``tr`` to ``path`` (atomically).

    Rows: the inputs (channels × time), the target and the outputs (probabilities), the
    write weightings and the read weightings (locations × time; the locations shown are
    those any head weighted by more than 1 %, padded by two, as the paper crops its figure).
    """
    plt = pyplot()
    x, target, out = tr["x"].T, tr["target"].T, tr["output"].T
    w = tr["weights"]  # (T, Hd, N)
    R = int(tr["read_heads"])
    reads, writes = w[:, :R].sum(1).T, w[:, R:].sum(1).T  # (N, T): heads of a kind summed
    used = (w.amax(dim=(0, 1)) > 0.01).nonzero().flatten()
    lo = max(0, int(used.min()) - 2) if used.numel() else 0
    hi = min(w.size(-1), int(used.max()) + 3) if used.numel() else w.size(-1)
    rows = [
        ("inputs", x),
        ("targets", target),
        ("outputs", out),
        ("write weightings", writes[lo:hi]),
        ("read weightings", reads[lo:hi]),
    ]
    if writes.numel() == 0:
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
            extent=None,
        )
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
        if "weight" in name:
            ax.set_yticks([0, data.size(0) - 1], [str(lo), str(hi - 1)])
        else:
            ax.set_yticks([])
    axes[-1].set_xlabel("time")
    if title:
        axes[0].set_title(title, fontsize=10)
    return save_figure(fig, path, dpi=110)
