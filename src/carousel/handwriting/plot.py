"""A picture of what a CTC recogniser sees: the strokes of a line of digits on top (pen
coordinates) and below them the network's per-frame label probabilities, one frame per
resampled pen point, left to right as written (matplotlib, Agg)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from carousel.handwriting.model import DIGITS, StringRecogniser


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def draw_probabilities(
    model: StringRecogniser,
    strokes: Sequence[np.ndarray],
    path: str | Path,
    label: str | None = None,
    step: float = 0.04,
    dpi: int = 90,
    *,
    resampling: str = "drop",
    smooth: float = 0.0,
) -> str:
    """Write a PNG of ``strokes`` (unit height, as composed) and the per-frame probabilities
    of blank and each digit; returns the greedy transcription.  The file is written to a
    temporary name and renamed, so it is never half-written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from carousel.data.batching import pad_batch
    from carousel.data.unipen import line_features, resample, resample_arc, smooth_strokes
    from carousel.handwriting.decode import greedy_decode

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"expected a .png path; got {path}")
    features = line_features(strokes, step, resampling=resampling, smooth=smooth)
    x, lengths = pad_batch([features])
    model.eval()
    with torch.no_grad():
        log_probs = model(x, lengths)[:, 0]  # (T, 11)
    probs = log_probs.exp().numpy()
    text = "".join(DIGITS[k - 1] for k in greedy_decode(log_probs))

    smoothed = smooth_strokes(strokes, smooth)
    points = resample_arc(smoothed, step) if resampling == "arc" else resample(smoothed, step)
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(10, 4.2), gridspec_kw={"height_ratios": [1.2, 1]}
    )
    frame = 0
    for s in points:
        top.plot(s[:, 0], s[:, 1], "-", color="k", linewidth=1.6)
        frame += len(s)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        plt.close(fig)
    return text
