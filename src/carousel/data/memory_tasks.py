"""Seeded generators for the Neural Turing Machine's memory tasks (Graves et al. 2014, §4).

Every generator takes a batch size ``B``, a ``torch.Generator`` and the range of the task's
*length* (what generalisation tests stretch), draws each sequence's own length in that range,
and returns a :class:`MemoryBatch`: inputs x (T, B, I), target bits (T, B, O) and the mask
(T, B) of the steps whose output is scored, zero-padded after each sequence's end.  The model
sees zeros as input while it answers.  The same generator state gives the same batch;
:func:`memory_batch` makes batch ``index`` of a seeded stream (so a stream resumes from its
index alone).

======================= ==================================================================
task                    definition (as in the paper; steps are 0-based, L a sequence's
                        length)
======================= ==================================================================
``copy``                §4.1.  L ∈ 1..20 random 8-bit vectors (bits 0/1 with p = ½), then
                        a delimiter on a 9th input channel; the target is the L vectors,
                        due at the L steps after the delimiter (I = 9, O = 8).
``repeat-copy``         §4.2.  L ∈ 1..10 vectors, the delimiter (channel 8), then the
                        repeat count R ∈ 1..10 on channel 9, normalised to mean 0 and
                        variance 1 over 1..10 ((R − 5.5)/√8.25); the target is the
                        sequence R times, then an end marker on a 9th output channel
                        (I = 10, O = 9).
``associative-recall``  §4.3.  L ∈ 2..6 items of 3 six-bit vectors, each item after a
                        delimiter step (channel 6); then a query delimiter (channel 7), a
                        copy of one of the first L − 1 items, the query delimiter again;
                        the target is the item that followed the query in the list
                        (I = 8, O = 6).
``priority-sort``       §4.5.  L = 20 random 8-bit vectors, each with a priority uniform in
                        [−1, 1] on channel 8, then a delimiter (channel 9); the target is
                        the 4L/5 = 16 vectors of highest priority, highest first
                        (I = 10, O = 8).
======================= ==================================================================
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable

import torch
from torch import Tensor

COPY_WIDTH = 8
RECALL_WIDTH = 6
RECALL_ITEM_STEPS = 3
REPEATS = (1, 10)  # the paper's training range of the repeat count, fixes its normalisation


@dataclasses.dataclass(frozen=True)
class MemoryBatch:
    """A batch of a memory task.

    Attributes:
        x: (T, B, I) inputs.
        target: (T, B, O) target bits (0/1), zero where ``mask`` is off.
        mask: (T, B) bool, the steps whose output is scored.
        lengths: (B,) int64, each sequence's length (vectors; items for associative recall).
    """

    x: Tensor
    target: Tensor
    mask: Tensor
    lengths: Tensor


@dataclasses.dataclass(frozen=True)
class MemoryTask:
    """A task: its generator ``make(B, gen, min_length, max_length)``, input and output
    sizes, and the paper's training range of its length."""

    name: str
    make: Callable[[int, torch.Generator, int, int], MemoryBatch]
    input_size: int
    output_size: int
    length_range: tuple[int, int]
    paper: str


def _check(B: int, lo: int, hi: int, least: int) -> None:
    if not isinstance(B, int) or isinstance(B, bool) or B < 1:
        raise ValueError(f"batch size must be a positive integer; got {B!r}")
    for name, v in (("min_length", lo), ("max_length", hi)):
        if not isinstance(v, int) or isinstance(v, bool) or v < least:
            raise ValueError(f"{name} must be an integer ≥ {least}; got {v!r}")
    if lo > hi:
        raise ValueError(f"min_length must be ≤ max_length; got {lo} > {hi}")


def _lengths(B: int, gen: torch.Generator, lo: int, hi: int) -> Tensor:
    return torch.randint(lo, hi + 1, (B,), generator=gen)


def _bits(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    return torch.randint(0, 2, shape, generator=gen).float()


def copy(B: int, gen: torch.Generator, min_length: int = 1, max_length: int = 20) -> MemoryBatch:
    """§4.1 copy: L vectors and a delimiter in, the L vectors out (T = 2·max L + 1)."""
    _check(B, min_length, max_length, 1)
    L = _lengths(B, gen, min_length, max_length)
    Lmax = int(L.max())
    bits = _bits((Lmax, B, COPY_WIDTH), gen)
    T = 2 * Lmax + 1
    t = torch.arange(T).unsqueeze(1)  # (T, 1)
    x = torch.zeros(T, B, COPY_WIDTH + 1)
    x[:Lmax, :, :COPY_WIDTH] = torch.where((t[:Lmax] < L).unsqueeze(-1), bits, 0.0)
    x[:, :, COPY_WIDTH] = (t == L).float()
    mask = (t > L) & (t <= 2 * L)  # (T, B)
    j = (t - L - 1).clamp(0, Lmax - 1)  # which vector is due at step t
    due = bits.gather(0, j.unsqueeze(-1).expand(T, B, COPY_WIDTH))
    target = torch.where(mask.unsqueeze(-1), due, 0.0)
    return MemoryBatch(x, target, mask, L)


def repeat_copy(
    B: int,
    gen: torch.Generator,
    min_length: int = 1,
    max_length: int = 10,
    min_repeats: int = REPEATS[0],
    max_repeats: int = REPEATS[1],
) -> MemoryBatch:
    """§4.2 repeat copy: L vectors, a delimiter, the repeat count R; the vectors R times and
    an end marker out."""
    _check(B, min_length, max_length, 1)
    if not 1 <= min_repeats <= max_repeats:
        raise ValueError(
            f"repeats must satisfy 1 ≤ min_repeats ≤ max_repeats; got {min_repeats}, {max_repeats}"
        )
    L = _lengths(B, gen, min_length, max_length)
    R = _lengths(B, gen, min_repeats, max_repeats)
    Lmax = int(L.max())
    bits = _bits((Lmax, B, COPY_WIDTH), gen)
    out_len = L * R + 1  # copies, then the end marker
    T = int((L + 2 + out_len).max())
    t = torch.arange(T).unsqueeze(1)
    x = torch.zeros(T, B, COPY_WIDTH + 2)
    x[:Lmax, :, :COPY_WIDTH] = torch.where((t[:Lmax] < L).unsqueeze(-1), bits, 0.0)
    x[:, :, COPY_WIDTH] = (t == L).float()
    mean = (REPEATS[0] + REPEATS[1]) / 2
    std = math.sqrt(((REPEATS[1] - REPEATS[0] + 1) ** 2 - 1) / 12)
    x[:, :, COPY_WIDTH + 1] = (t == L + 1).float() * ((R.float() - mean) / std)
    j = t - L - 2  # position in the output phase
    mask = (j >= 0) & (j < out_len)
    copies = mask & (j < L * R)
    idx = (j.clamp(min=0) % L).clamp(max=Lmax - 1)
    due = bits.gather(0, idx.unsqueeze(-1).expand(T, B, COPY_WIDTH))
    target = torch.zeros(T, B, COPY_WIDTH + 1)
    target[:, :, :COPY_WIDTH] = torch.where(copies.unsqueeze(-1), due, 0.0)
    target[:, :, COPY_WIDTH] = (j == L * R).float()
    return MemoryBatch(x, target, mask, L)


def associative_recall(
    B: int, gen: torch.Generator, min_length: int = 2, max_length: int = 6
) -> MemoryBatch:
    """§4.3 associative recall: L items (3 six-bit vectors each, a delimiter before each),
    a query item between two query delimiters; out: the item after the query."""
    _check(B, min_length, max_length, 2)
    K = _lengths(B, gen, min_length, max_length)
    Kmax, S, W = int(K.max()), RECALL_ITEM_STEPS, RECALL_WIDTH
    items = _bits((Kmax, S, B, W), gen)
    q = (torch.rand(B, generator=gen, dtype=torch.float64) * (K - 1)).floor().long()  # 0..K−2
    step = S + 1
    T = int((step * K + S + 2 + S).max())
    x = torch.zeros(T, B, W + 2)
    target = torch.zeros(T, B, W)
    mask = torch.zeros(T, B, dtype=torch.bool)
    for b in range(B):  # data, not the model: a short loop keeps the layout readable
        k = int(K[b])
        for i in range(k):
            x[step * i, b, W] = 1.0
            x[step * i + 1 : step * i + 1 + S, b, :W] = items[i, :, b]
        start = step * k
        x[start, b, W + 1] = 1.0
        x[start + 1 : start + 1 + S, b, :W] = items[int(q[b]), :, b]
        x[start + 1 + S, b, W + 1] = 1.0
        out = start + 2 + S
        target[out : out + S, b] = items[int(q[b]) + 1, :, b]
        mask[out : out + S, b] = True
    return MemoryBatch(x, target, mask, K)


def priority_sort(
    B: int, gen: torch.Generator, min_length: int = 20, max_length: int = 20
) -> MemoryBatch:
    """§4.5 priority sort: L vectors with priorities in [−1, 1], a delimiter; out: the 4L/5
    of highest priority, highest first."""
    _check(B, min_length, max_length, 1)
    L = _lengths(B, gen, min_length, max_length)
    Lmax = int(L.max())
    bits = _bits((Lmax, B, COPY_WIDTH), gen)
    priority = torch.rand(Lmax, B, generator=gen) * 2 - 1
    keep = (4 * L) // 5
    T = int((L + 1 + keep).max())
    x = torch.zeros(T, B, COPY_WIDTH + 2)
    target = torch.zeros(T, B, COPY_WIDTH)
    mask = torch.zeros(T, B, dtype=torch.bool)
    for b in range(B):
        n, m = int(L[b]), int(keep[b])
        x[:n, b, :COPY_WIDTH] = bits[:n, b]
        x[:n, b, COPY_WIDTH] = priority[:n, b]
        x[n, b, COPY_WIDTH + 1] = 1.0
        order = torch.argsort(priority[:n, b], descending=True)[:m]
        target[n + 1 : n + 1 + m, b] = bits[order, b]
        mask[n + 1 : n + 1 + m, b] = True
    return MemoryBatch(x, target, mask, L)


MEMORY_TASKS: dict[str, MemoryTask] = {
    "copy": MemoryTask("copy", copy, COPY_WIDTH + 1, COPY_WIDTH, (1, 20), "§4.1"),
    "repeat-copy": MemoryTask(
        "repeat-copy", repeat_copy, COPY_WIDTH + 2, COPY_WIDTH + 1, (1, 10), "§4.2"
    ),
    "associative-recall": MemoryTask(
        "associative-recall", associative_recall, RECALL_WIDTH + 2, RECALL_WIDTH, (2, 6), "§4.3"
    ),
    "priority-sort": MemoryTask(
        "priority-sort", priority_sort, COPY_WIDTH + 2, COPY_WIDTH, (20, 20), "§4.5"
    ),
}


def get_memory_task(name: str) -> MemoryTask:
    """The memory task ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in MEMORY_TASKS:
        raise ValueError(f"unknown memory task {name!r}; known: {', '.join(MEMORY_TASKS)}")
    return MEMORY_TASKS[name]


def stream_seed(task: str, seed: int, index: int) -> int:
    """The generator seed of batch ``index`` of stream ``seed`` (distinct for every pair)."""
    digest = hashlib.sha256(f"{task}|{int(seed)}|{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def memory_batch(
    task: str,
    B: int,
    seed: int,
    index: int = 0,
    min_length: int | None = None,
    max_length: int | None = None,
) -> MemoryBatch:
    """Batch ``index`` of the seeded stream ``seed`` of ``task``, B sequences with lengths in
    min_length..max_length (default: the paper's training range)."""
    spec = get_memory_task(task)
    lo = spec.length_range[0] if min_length is None else min_length
    hi = spec.length_range[1] if max_length is None else max_length
    gen = torch.Generator().manual_seed(stream_seed(task, seed, index))
    return spec.make(B, gen, lo, hi)
