"""A picture of what a CTC recogniser sees: the strokes of a line of digits on top (pen
coordinates) and below them the network's per-frame label probabilities, one frame per
resampled pen point, left to right as written (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from carousel.data.batching import pad_batch
from carousel.data.strokes import (
    DEFAULT_FEATURISATION,
    Featurisation,
    line_features,
    resampled_points,
)
from carousel.handwriting.decode import greedy_decode
from carousel.handwriting.model import DIGITS, StringRecogniser
from carousel.io import pyplot, save_figure


def draw_probabilities(
    model: StringRecogniser,
    strokes: Sequence[np.ndarray],
    path: str | Path,
    label: str | None = None,
    featurisation: Featurisation = DEFAULT_FEATURISATION,
    dpi: int = 90,
) -> str:
    """Write a PNG of ``strokes`` (unit height, as composed) and the per-frame probabilities
    of blank and each digit (featurised by ``featurisation``, as the model was trained);
    returns the greedy transcription.  Written atomically (:func:`carousel.io.save_figure`)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"expected a .png path; got {path}")
    x, lengths = pad_batch([line_features(strokes, featurisation)])
    model.eval()
    with torch.no_grad():
        log_probs = model(x.to(next(model.parameters()).device), lengths)[:, 0].cpu()  # (T, 11)
    probs = log_probs.exp().numpy()
    text = "".join(DIGITS[k - 1] for k in greedy_decode(log_probs))

    plt = pyplot()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(10, 4.2), gridspec_kw={"height_ratios": [1.2, 1]}
    )
    for s in resampled_points(strokes, featurisation):
        top.plot(s[:, 0], s[:, 1], "-", color="k", linewidth=1.6)
    top.set_aspect("equal")
    top.axis("off")
    title = f"read: {text!r}" + (f"   truth: {label!r}" if label is not None else "")
    top.set_title(title, fontsize=10)
    frames = np.arange(len(probs))
    bottom.plot(frames, probs[:, 0], color="0.7", linewidth=1, label="blank")
    colours = plt.get_cmap("tab10")
    for k in range(1, probs.shape[1]):
        if probs[:, k].max() > 0.05:
            bottom.plot(frames, probs[:, k], color=colours(k - 1), linewidth=1.4)
            peak = int(probs[:, k].argmax())
            bottom.text(
                peak,
                probs[peak, k] + 0.03,
                DIGITS[k - 1],
                color=colours(k - 1),
                ha="center",
                fontsize=9,
                fontweight="bold",
            )
    bottom.set_xlim(0, max(len(probs) - 1, 1))
    bottom.set_ylim(0, 1.15)
    bottom.set_xlabel("frame (resampled pen point)")
    bottom.set_ylabel("p(label)")
    bottom.legend(loc="upper right", fontsize=8, frameon=False)
    fig.tight_layout()
    save_figure(fig, path, dpi=dpi)
    return text
