"""CTC decoding and scores: greedy (best path) and prefix beam search over per-frame label
log-probabilities, edit distance, character error rate and whole-string accuracy.

Label 0 is the CTC blank; a decoded sequence is a list of label indices without blanks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def _check(log_probs: Tensor) -> Tensor:
    if not isinstance(log_probs, Tensor) or log_probs.dim() != 2 or log_probs.size(1) < 2:
        shape = tuple(log_probs.shape) if isinstance(log_probs, Tensor) else type(log_probs)
        raise ValueError(f"expected per-frame log-probabilities (T, C) with C ≥ 2; got {shape}")
    return log_probs.detach().to(torch.float64).cpu()


def greedy_decode(log_probs: Tensor, blank: int = 0) -> list[int]:
    """Best path: the most likely label of every frame, repeats merged, blanks removed.

    Args:
        log_probs: (T, C) log-probabilities (or any scores: only the argmax matters).
    """
    best = _check(log_probs).argmax(dim=1).tolist()
    out, previous = [], None
    for label in best:
        if label != previous and label != blank:
            out.append(label)
        previous = label
    return out


def _logadd(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


def beam_decode(log_probs: Tensor, beam_width: int = 8, blank: int = 0) -> list[int]:
    """CTC prefix beam search: the labelling whose summed probability over all the paths
    that collapse to it is highest among the ``beam_width`` prefixes kept at each frame.

    Args:
        log_probs: (T, C) log-probabilities (each row a log-softmax).
    """
    if beam_width < 1:
        raise ValueError(f"beam_width must be at least 1; got {beam_width}")
    lp = _check(log_probs).tolist()
    # prefix -> (log P(prefix, ending in blank), log P(prefix, ending in its last label))
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}
    for row in lp:
        nxt: dict[tuple[int, ...], list[float]] = {}

        def add(prefix: tuple[int, ...], pb: float, pnb: float, _n=nxt) -> None:
            cur = _n.setdefault(prefix, [-math.inf, -math.inf])
            cur[0], cur[1] = _logadd(cur[0], pb), _logadd(cur[1], pnb)

        for prefix, (pb, pnb) in beams.items():
            total = _logadd(pb, pnb)
            add(prefix, total + row[blank], -math.inf)  # a blank keeps the prefix
            last = prefix[-1] if prefix else None
            for c, p in enumerate(row):
                if c == blank:
                    continue
                if c == last:
                    add(prefix, -math.inf, pnb + p)  # repeat merges into the same label
                    add((*prefix, c), -math.inf, pb + p)  # after a blank it is a new label
                else:
                    add((*prefix, c), -math.inf, total + p)
        ranked = sorted(nxt.items(), key=lambda kv: _logadd(*kv[1]), reverse=True)
        beams = {k: (v[0], v[1]) for k, v in ranked[:beam_width]}
    return list(max(beams.items(), key=lambda kv: _logadd(*kv[1]))[0])


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance (insertions, deletions, substitutions each cost 1)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def character_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Summed edit distance over summed reference length (a fraction; can exceed 1)."""
    if len(references) != len(hypotheses) or not references:
        raise ValueError(
            f"expected equally many (≥ 1) references and hypotheses; got {len(references)} "
            f"and {len(hypotheses)}"
        )
    chars = sum(len(r) for r in references)
    if chars == 0:
        raise ValueError("the references are all empty")
    return sum(edit_distance(r, h) for r, h in zip(references, hypotheses)) / chars


def string_accuracy(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """The fraction of strings recognised exactly."""
    if len(references) != len(hypotheses) or not references:
        raise ValueError("expected equally many (≥ 1) references and hypotheses")
    return sum(r == h for r, h in zip(references, hypotheses)) / len(references)
