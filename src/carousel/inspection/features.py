"""Simple features of a text, one value per character, and the units that follow them.

Each feature describes the text *after reading* character t, which is what a character model's
state at step t has seen: an opening quote is already inside the quotes, the closing one is
outside again; a newline is at line position 0.  Karpathy, Johnson & Fei-Fei (2015, "Visualizing
and Understanding Recurrent Networks") found cells that track such things; :func:`find_units`
correlates every unit of a :class:`~carousel.inspection.record.Recording` with every feature
and ranks them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

OPEN_BRACKETS = "([{"
CLOSE_BRACKETS = ")]}"


def inside_quotes(text: str) -> Tensor:
    """1 from an opening ``"`` up to (not including) its closing ``"``, else 0."""
    out, inside = [], False
    for ch in text:
        if ch == '"':
            inside = not inside
        out.append(inside)
    return torch.tensor(out, dtype=torch.float64)


def bracket_depth(text: str) -> Tensor:
    """How many ``( [ {`` are open after each character (never below 0)."""
    out, depth = [], 0
    for ch in text:
        if ch in OPEN_BRACKETS:
            depth += 1
        elif ch in CLOSE_BRACKETS:
            depth = max(depth - 1, 0)
        out.append(depth)
    return torch.tensor(out, dtype=torch.float64)


def inside_brackets(text: str) -> Tensor:
    """1 from an opening bracket up to (not including) the one that closes it, else 0."""
    return (bracket_depth(text) > 0).to(torch.float64)


def since_newline(text: str) -> Tensor:
    """Characters since the last newline: 0 at a newline, 1 at the character after it, ...;
    the text's first character counts as 1 (a line starts before it)."""
    out, n = [], 0
    for ch in text:
        n = 0 if ch == "\n" else n + 1
        out.append(n)
    return torch.tensor(out, dtype=torch.float64)


def line_position(text: str) -> Tensor:
    """Where in its line a character is, from 0 (first) to 1 (the newline that ends it, or
    the last character of an unfinished line); 0 at the newline of an empty line."""
    out: list[float] = []
    start = 0
    for line in text.split("\n"):
        n = len(line)  # the characters of the line; the newline after it is position n
        end = n + 1 if start + n < len(text) else n
        for j in range(end):
            out.append(j / n if n else 0.0)
        start += n + 1
    return torch.tensor(out, dtype=torch.float64)


def word_start(text: str) -> Tensor:
    """1 at a letter or digit whose preceding character is neither (the first of a word)."""
    out, prev = [], False
    for ch in text:
        cur = ch.isalnum()
        out.append(cur and not prev)
        prev = cur
    return torch.tensor(out, dtype=torch.float64)


def upper_case(text: str) -> Tensor:
    """1 at an upper-case letter."""
    return torch.tensor([ch.isupper() for ch in text], dtype=torch.float64)


#: the features computed from a text, name -> function (text -> (T,) float64)
FEATURES: dict[str, Callable[[str], Tensor]] = {
    "inside quotes": inside_quotes,
    "inside brackets": inside_brackets,
    "bracket depth": bracket_depth,
    "line position": line_position,
    "since newline": since_newline,
    "word start": word_start,
    "upper case": upper_case,
}


def text_features(text: str) -> dict[str, Tensor]:
    """Every feature of :data:`FEATURES` on ``text``, each (T,) float64."""
    return {name: fn(text) for name, fn in FEATURES.items()}


def correlations(units: Tensor, feature: Tensor) -> Tensor:
    """Pearson correlation of each column of ``units`` (T, N) with ``feature`` (T,): (N,).

    A constant column or a constant feature has no correlation; it is reported as 0.
    """
    if units.dim() != 2 or feature.dim() != 1 or units.size(0) != feature.size(0):
        raise ValueError(
            f"expected units (T, N) and a feature (T,) of the same T; got "
            f"{tuple(units.shape)} and {tuple(feature.shape)}"
        )
    u = units.to(torch.float64)
    u = u - u.mean(0)
    f = feature.to(torch.float64) - feature.to(torch.float64).mean()
    den = u.norm(dim=0) * f.norm()
    r = (f @ u) / den
    return torch.where(den > 0, r, 0.0)


@dataclasses.dataclass(frozen=True)
class Unit:
    """One unit of one signal and its correlation with one feature."""

    signal: str  # e.g. "l1 s" (see Recording.signals)
    unit: int
    feature: str
    r: float  # Pearson correlation

    def name(self) -> str:
        return f"{self.signal} #{self.unit}"


def _varying(features: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The features that are not constant over the text (a constant one correlates with
    nothing)."""
    return {k: f for k, f in features.items() if f.numel() > 1 and bool((f != f[0]).any())}


def correlation_table(
    signals: Mapping[str, Tensor], features: Mapping[str, Tensor]
) -> tuple[list[tuple[str, int]], list[str], Tensor]:
    """The correlation of every unit with every feature: ``(units, feature names, r)`` with
    ``units`` the (signal label, unit index) of each column and r (F, N), one signal
    (T, H) at a time so that a long text needs no copy of all signals at once."""
    if not signals:
        raise ValueError("no signals to correlate")
    names = list(features)
    if not names:
        raise ValueError("no features to correlate with")
    T = next(iter(features.values())).numel()
    f = torch.stack([features[n].to(torch.float64) for n in names], dim=1)  # (T, F)
    f = f - f.mean(0)
    f_norm = f.norm(dim=0)  # (F,)
    labels, blocks = [], []
    for label, values in signals.items():
        if values.dim() != 2 or values.size(0) != T:
            raise ValueError(
                f"signal {label!r} must be (T, H) with T = {T}; got {tuple(values.shape)}"
            )
        u = values.to(torch.float64)
        u = u - u.mean(0)
        den = f_norm.unsqueeze(1) * u.norm(dim=0)  # (F, H)
        blocks.append(torch.where(den > 0, (f.T @ u) / den, 0.0))
        labels.extend((label, j) for j in range(values.size(1)))
    return labels, names, torch.cat(blocks, dim=1)


def find_units(
    signals: Mapping[str, Tensor],
    features: Mapping[str, Tensor],
    top: int = 5,
) -> dict[str, list[Unit]]:
    """The ``top`` units of ``signals`` (label -> (T, H)) most correlated with each feature
    (name -> (T,)), best first by |r|; a feature constant over the text gets none."""
    if top < 1:
        raise ValueError(f"top must be positive; got {top}")
    varying = _varying(features)
    out: dict[str, list[Unit]] = {name: [] for name in features}
    if not varying:
        return out
    labels, names, r = correlation_table(signals, varying)
    for k, name in enumerate(names):
        order = r[k].abs().argsort(descending=True, stable=True)[:top]
        out[name] = [Unit(*labels[i], name, float(r[k, i])) for i in order.tolist()]
    return out


def rank_units(
    signals: Mapping[str, Tensor], features: Mapping[str, Tensor], top: int = 50
) -> list[Unit]:
    """The ``top`` units ranked by their strongest |correlation| with any feature (and that
    feature), best first."""
    varying = _varying(features)
    if not varying:
        return []
    labels, names, r = correlation_table(signals, varying)  # r (F, N)
    best = r.abs().argmax(dim=0)  # (N,)
    strength = r.abs().gather(0, best.unsqueeze(0)).squeeze(0)
    order = strength.argsort(descending=True, stable=True)[:top]
    return [Unit(*labels[i], names[int(best[i])], float(r[best[i], i])) for i in order.tolist()]
