"""Inspect a character language model on a text: record it, find the units that follow the
text's features, and write the page and the figures into a folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from carousel.data.corpora import Vocab
from carousel.inspection.features import find_units, rank_units, text_features
from carousel.inspection.figures import heatmap_plot, saturation_plot
from carousel.inspection.page import render_page
from carousel.inspection.record import Recording, record
from carousel.io import atomic_write
from carousel.lm.model import RNNLM

#: the files :func:`inspect_text` writes
PAGE, SATURATION, HEATMAP, UNITS = "page.html", "saturation.png", "heatmap.png", "units.json"


@torch.no_grad()
def record_text(model: RNNLM, vocab: Vocab, text: str) -> Recording:
    """Run ``model`` over ``text`` (one sequence from a zero state, B = 1) on the reference
    path and record every gate and state of its recurrent layers (no dropout)."""
    if vocab.level != "char":
        raise ValueError(f"inspect reads character models; this one's vocabulary is {vocab.level}s")
    if not text:
        raise ValueError("the text to inspect is empty")
    ids = vocab.encode(text, "the text to inspect")
    param = next(model.parameters())
    x = model.embedding(ids.view(-1, 1).to(param.device))  # (T, 1, E)
    return record(model.rnn, x)


def signals_of(rec: Recording, batch: int = 0) -> dict[str, Tensor]:
    """Every signal of one sequence of ``rec``: label -> (T, H), on the CPU."""
    return {label: v[:, batch].detach().cpu() for label, v in rec.signals()}


def inspect_text(
    model: RNNLM,
    vocab: Vocab,
    text: str,
    out: str | Path,
    *,
    page_chars: int = 2000,
    top: int = 5,
    ranked: int = 50,
    heatmap_units: int = 12,
    heatmap_chars: int = 120,
    title: str = "carousel inspect",
    notes: tuple[str, ...] = (),
) -> dict:
    """Record ``model`` on ``text``, correlate every unit with the text's features (all of
    the text), and write into folder ``out``: ``page.html`` (its first ``page_chars``
    characters), ``saturation.png``, ``heatmap.png`` (``heatmap_units`` units over the first
    ``heatmap_chars`` characters: the best of each feature, then the second best, ...)
    and ``units.json`` (the best units per feature and the ranking).  Returns that summary
    with the paths."""
    for name, value in (("page_chars", page_chars), ("top", top), ("ranked", ranked)):
        if value < 1:
            raise ValueError(f"{name} must be positive; got {value}")
    model.eval()
    rec = record_text(model, vocab, text)
    signals = signals_of(rec)
    features = text_features(text)
    best = find_units(signals, features, top=top)
    ranking = rank_units(signals, features, top=ranked)
    out = Path(out)
    shown = text[:page_chars]
    page = render_page(
        shown,
        {k: v[: len(shown)] for k, v in signals.items()},
        best,
        ranking,
        title=title,
        notes=(
            *notes,
            f"{len(text):,} characters recorded; correlations over all of them, "
            f"the page shows the first {len(shown):,}",
        ),
    )
    atomic_write(out / PAGE, page.encode("utf-8"))
    atomic_write(out / SATURATION, saturation_plot(rec, title=title))
    chosen = _heatmap_units(best, ranking, heatmap_units)
    atomic_write(out / HEATMAP, heatmap_plot(text, rec, chosen, length=heatmap_chars, title=title))
    summary = {
        "characters": len(text),
        "best": {k: [u.__dict__ for u in units] for k, units in best.items()},
        "ranked": [u.__dict__ for u in ranking],
        "files": {
            k: str(out / v)
            for k, v in (
                ("page", PAGE),
                ("saturation", SATURATION),
                ("heatmap", HEATMAP),
                ("units", UNITS),
            )
        },
    }
    atomic_write(out / UNITS, (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    return summary


def _heatmap_units(best, ranking, n):
    """Round robin over the features (the best unit of each, then the second best, ...),
    then ranked units, without repeats, at most ``n``: every feature gets its rows even when
    one feature's units dominate the ranking."""
    chosen, seen = [], set()
    depth = max((len(units) for units in best.values()), default=0)
    rounds = [units[k] for k in range(depth) for units in best.values() if k < len(units)]
    for u in [*rounds, *ranking]:
        if (u.signal, u.unit) not in seen and len(chosen) < n:
            seen.add((u.signal, u.unit))
            chosen.append(u)
    return chosen
