"""Seeded generators for the long-time-lag tasks of Hochreiter & Schmidhuber (1997) and the
copy (memory) task.

Every generator takes a batch size ``B``, a minimal length ``T`` and a ``torch.Generator`` and
returns a :class:`Batch`: inputs (T_max, B, I) with zero padding after each sequence's own
length, the lengths (B,), and the target.  The same generator state gives the same batch.

=================== =====================================================================
task                definition (positions are 0-based)
=================== =====================================================================
``adding``          Exp. 4.  Pairs (value in [−1, 1], marker), length T…T+T/10.  One of
                    the first 10 pairs and one of the first T/2 − 1 other pairs are marked
                    1; the first and last pairs are marked −1 (unless marked 1).  Target
                    0.5 + (X1 + X2)/4 at the end.  A marked first pair has value 0.
``multiplication``  Exp. 5.  As ``adding`` with values in [0, 1] and target X1·X2; a marked
                    first pair has value 1.
``order6a``         Exp. 6a.  Symbols E, B, a, b, c, d, X, Y one-hot (I = 8).  E first, B
                    (the trigger) last, distractors a–d between, except X or Y at t1 ∈
                    [T/10, T/5] and t2 ∈ [T/2, 0.6T].  Class XX, XY, YX, YY (4 classes) at
                    the end.  T = 100 gives the paper's lengths 100–110, t1 ∈ [10, 20], t2
                    ∈ [50, 60].
``order6b``         Exp. 6b.  Three relevant symbols at t1 ∈ [T/10, T/5], t2 ∈ [0.33T,
                    0.43T], t3 ∈ [0.66T, 0.76T]; 8 classes.
``copy``            The memory task: k = 10 symbols from 8, a blank of T steps, a
                    delimiter, then k recall steps whose targets are the k symbols
                    (one-hot input, I = 10; fixed length 2k + T + 1).
=================== =====================================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

MIN_T = 10

#: temporal-order symbols, in one-hot index order
ORDER_SYMBOLS = ("E", "B", "a", "b", "c", "d", "X", "Y")
COPY_SYMBOLS = 8  # alphabet of the copy task; index 8 is the blank, 9 the delimiter
COPY_K = 10


@dataclasses.dataclass(frozen=True)
class Batch:
    """A batch of one task.

    Attributes:
        x: (T_max, B, I) inputs, zero after each sequence's length.
        lengths: (B,) int64 true lengths.
        target: regression tasks (B,) float; temporal order (B,) int64 class; copy (k, B)
            int64 symbols to recall at the last k steps.
    """

    x: Tensor
    lengths: Tensor
    target: Tensor


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What a task is: its generator, input size I, and what the network outputs."""

    name: str
    make: Callable[[int, int, torch.Generator, bool], Batch]
    input_size: int
    #: "regression" (one value at the end), "classification" (one class at the end) or
    #: "sequence" (a class at each of the last k steps)
    output: str
    num_outputs: int
    paper: str


def _check(B: int, T: int) -> None:
    if not isinstance(T, int) or isinstance(T, bool) or T < MIN_T:
        raise ValueError(f"T must be an integer ≥ {MIN_T}; got {T!r}")
    if not isinstance(B, int) or isinstance(B, bool) or B < 1:
        raise ValueError(f"batch size must be a positive integer; got {B!r}")


def _lengths(B: int, T: int, gen: torch.Generator, fixed_length: bool) -> Tensor:
    if fixed_length:
        return torch.full((B,), T, dtype=torch.int64)
    return torch.randint(T, T + T // 10 + 1, (B,), generator=gen)


def _randint(lo: Tensor | int, hi: Tensor | int, B: int, gen: torch.Generator) -> Tensor:
    """(B,) integers uniform in lo..hi inclusive (per-sequence bounds allowed)."""
    lo, hi = torch.as_tensor(lo), torch.as_tensor(hi)
    u = torch.rand(B, generator=gen, dtype=torch.float64)
    return lo + (u * (hi - lo + 1)).floor().to(torch.int64)


def _marked_pairs(B: int, T: int, lengths: Tensor, gen: torch.Generator, lo: float, hi: float):
    """The shared part of adding and multiplication: values, markers, the two positions."""
    Tmax = int(lengths.max())
    cols = torch.arange(B)
    values = lo + (hi - lo) * torch.rand(Tmax, B, generator=gen)  # (T, B)
    t = torch.arange(Tmax).unsqueeze(1)  # (T, 1)
    values = torch.where(t < lengths, values, 0.0)
    markers = torch.zeros(Tmax, B)
    markers[0] = -1.0
    markers[lengths - 1, cols] = -1.0
    p1 = torch.randint(0, 10, (B,), generator=gen)
    # the r-th of the first T/2 − 1 pairs still unmarked: skip p1
    r = torch.randint(0, T // 2 - 1, (B,), generator=gen)
    p2 = torch.where(r >= p1, r + 1, r)
    markers[p1, cols] = 1.0
    markers[p2, cols] = 1.0
    return values, markers, p1, p2


def adding(B: int, T: int, gen: torch.Generator, fixed_length: bool = False) -> Batch:
    """Exp. 4, the adding problem; target 0.5 + (X1 + X2)/4 in [0, 1]."""
    _check(B, T)
    lengths = _lengths(B, T, gen, fixed_length)
    values, markers, p1, p2 = _marked_pairs(B, T, lengths, gen, -1.0, 1.0)
    values[0] = torch.where(markers[0] == 1.0, 0.0, values[0])  # a marked first pair is 0
    cols = torch.arange(B)
    target = 0.5 + (values[p1, cols] + values[p2, cols]) / 4.0
    return Batch(torch.stack([values, markers], dim=2), lengths, target)  # x (T, B, 2)


def multiplication(B: int, T: int, gen: torch.Generator, fixed_length: bool = False) -> Batch:
    """Exp. 5, the multiplication problem; target X1·X2 in [0, 1]."""
    _check(B, T)
    lengths = _lengths(B, T, gen, fixed_length)
    values, markers, p1, p2 = _marked_pairs(B, T, lengths, gen, 0.0, 1.0)
    values[0] = torch.where(markers[0] == 1.0, 1.0, values[0])  # a marked first pair is 1
    cols = torch.arange(B)
    target = values[p1, cols] * values[p2, cols]
    return Batch(torch.stack([values, markers], dim=2), lengths, target)  # x (T, B, 2)


def _order_windows(T: int, relevant: int) -> list[tuple[int, int]]:
    """Inclusive position windows of the relevant symbols (the paper's for T = 100)."""
    if relevant == 2:
        fractions = [(0.10, 0.20), (0.50, 0.60)]
    else:
        fractions = [(0.10, 0.20), (0.33, 0.43), (0.66, 0.76)]
    return [(round(a * T), round(b * T)) for a, b in fractions]


def _temporal_order(B: int, T: int, gen: torch.Generator, fixed_length: bool, relevant: int):
    _check(B, T)
    lengths = _lengths(B, T, gen, fixed_length)
    Tmax = int(lengths.max())
    cols = torch.arange(B)
    symbols = torch.randint(2, 6, (Tmax, B), generator=gen)  # distractors a, b, c, d
    symbols[0] = 0  # E
    symbols[lengths - 1, cols] = 1  # B, the trigger
    target = torch.zeros(B, dtype=torch.int64)
    for lo, hi in _order_windows(T, relevant):
        pos = _randint(lo, hi, B, gen)
        bit = torch.randint(0, 2, (B,), generator=gen)  # 0: X, 1: Y
        symbols[pos, cols] = 6 + bit
        target = target * 2 + bit
    x = torch.nn.functional.one_hot(symbols, len(ORDER_SYMBOLS)).float()  # (T, B, 8)
    x = torch.where((torch.arange(Tmax).unsqueeze(1) < lengths).unsqueeze(2), x, 0.0)
    return Batch(x, lengths, target)


def order6a(B: int, T: int, gen: torch.Generator, fixed_length: bool = False) -> Batch:
    """Exp. 6a, temporal order with two relevant symbols: 4 classes (XX, XY, YX, YY)."""
    return _temporal_order(B, T, gen, fixed_length, 2)


def order6b(B: int, T: int, gen: torch.Generator, fixed_length: bool = False) -> Batch:
    """Exp. 6b, temporal order with three relevant symbols: 8 classes (X,X,X through Y,Y,Y)."""
    return _temporal_order(B, T, gen, fixed_length, 3)


def copy_task(B: int, T: int, gen: torch.Generator, fixed_length: bool = True) -> Batch:
    """The copy task: remember k = 10 symbols across a blank of T steps.

    Input (2k + T + 1, B, 10): the k symbols, T blanks, the delimiter, k blanks; the targets
    (k, B) are the k symbols, due at the last k steps.  The length is always fixed.
    """
    _check(B, T)
    k = COPY_K
    data = torch.randint(0, COPY_SYMBOLS, (k, B), generator=gen)
    seq = torch.full((2 * k + T + 1, B), COPY_SYMBOLS, dtype=torch.int64)  # blanks
    seq[:k] = data
    seq[k + T] = COPY_SYMBOLS + 1  # delimiter
    x = torch.nn.functional.one_hot(seq, COPY_SYMBOLS + 2).float()
    return Batch(x, torch.full((B,), 2 * k + T + 1, dtype=torch.int64), data)


TASKS: dict[str, TaskSpec] = {
    "adding": TaskSpec("adding", adding, 2, "regression", 1, "Exp. 4"),
    "multiplication": TaskSpec("multiplication", multiplication, 2, "regression", 1, "Exp. 5"),
    "order6a": TaskSpec("order6a", order6a, 8, "classification", 4, "Exp. 6a"),
    "order6b": TaskSpec("order6b", order6b, 8, "classification", 8, "Exp. 6b"),
    "copy": TaskSpec("copy", copy_task, COPY_SYMBOLS + 2, "sequence", COPY_SYMBOLS, "memory"),
}


def get_task(name: str) -> TaskSpec:
    """The task ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def make_batch(task: str, B: int, T: int, seed_or_gen: int | torch.Generator) -> Batch:
    """A batch of ``task``: B sequences of minimal length T from a seed or a generator."""
    spec = get_task(task)
    gen = seed_or_gen
    if not isinstance(gen, torch.Generator):
        gen = torch.Generator().manual_seed(int(seed_or_gen))
    return spec.make(B, T, gen)
