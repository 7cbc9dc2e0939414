"""Batches: windows of token streams for truncated backpropagation through time (language
models), and batches of whole variable-length sequences (tagging, handwriting).

**Truncated BPTT**, as in the TensorFlow PTB tutorial and the PyTorch word-language-model
example.

The token stream is cut into B contiguous streams (the tail that does not fill a row is
dropped), laid side by side as the columns of an (N, B) tensor.  Batch k is the next
``bptt`` rows; its targets are the same rows shifted down by one.  The recurrent state at
the end of batch k is the initial state of batch k + 1 (detached), zeros at the start::

    tokens  a b c d e f g h i j k l m n o p q r s t u v w x      (24 tokens, B = 4)

                 stream 0  stream 1  stream 2  stream 3
    row  0          a         g         m         s     ┐
    row  1          b         h         n         t     │ batch 0 (bptt = 2): input rows 0-1,
    row  2          c         i         o         u     ┘ target rows 1-2
    row  3          d         j         p         v       batch 1: input rows 2-3, target 3-4
    row  4          e         k         q         w       batch 2: input row 4, target row 5
    row  5          f         l         r         x

Each column is read top to bottom across batches, so the state of column b carries the
context of stream b.  With ``random_bptt`` the length of each batch is drawn as in AWD-LSTM
(``bptt`` with probability 0.95, else ``bptt / 2``, then ~N(that, 5), at least 5) from a
generator seeded by (seed, epoch): an epoch's layout is a pure function of its number, so a
run resumes at (epoch, batch index) exactly.

In data-parallel training rank r of W takes columns ``r·B/W … (r+1)·B/W − 1``: the same
global batch, split by streams.

**Whole sequences** of different lengths (sentences, pen trajectories): :func:`length_batches`
groups indices of similar length so a batch pads only to its own longest sequence, and
:func:`pad_batch` lays a batch of (T_b, F) arrays out as (T, B, F) with their lengths, for
the layers' ``lengths=``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def batchify(ids: Tensor, batch_size: int) -> Tensor:
    """The 1-D token ids as B contiguous streams: (N, B), N = len(ids) // B."""
    if ids.dim() != 1:
        raise ValueError(f"token ids must be 1-D; got shape {tuple(ids.shape)}")
    n = ids.numel() // batch_size
    if n < 2:
        raise ValueError(
            f"{ids.numel()} tokens are too few for {batch_size} streams of at least 2 tokens"
        )
    return ids[: n * batch_size].view(batch_size, n).t().contiguous()  # (N, B)


def epoch_layout(
    rows: int, bptt: int, random_bptt: bool = False, seed: int = 0, epoch: int = 0
) -> list[tuple[int, int]]:
    """(start row, length) of each batch of an epoch over an (N, B) stream tensor of
    N = ``rows`` rows; every batch has at least one input row and its target row."""
    if bptt < 1:
        raise ValueError(f"bptt must be at least 1; got {bptt}")
    rng = random.Random(seed * 1_000_003 + epoch)
    out, i = [], 0
    while i < rows - 1:
        length = bptt
        if random_bptt:
            base = bptt if rng.random() < 0.95 else bptt / 2
            length = max(5, int(rng.gauss(base, 5)))
        length = min(length, rows - 1 - i)
        out.append((i, length))
        i += length
    return out


def get_batch(streams: Tensor, start: int, length: int) -> tuple[Tensor, Tensor]:
    """Input (T, B) rows ``start … start+length−1`` and targets (T, B) one row later."""
    return streams[start : start + length], streams[start + 1 : start + 1 + length]


def shard_columns(streams: Tensor, rank: int, world: int) -> Tensor:
    """The columns of (N, B) streams that data-parallel rank ``rank`` of ``world`` trains on."""
    B = streams.size(1)
    if B % world:
        raise ValueError(f"batch_size {B} must be a multiple of the {world} processes")
    per = B // world
    return streams[:, rank * per : (rank + 1) * per]


def length_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random | None = None
) -> list[list[int]]:
    """Indices cut into batches of similar lengths: sorted by length (ties broken at random
    when ``rng`` is given), cut every ``batch_size``, batch order shuffled by ``rng``."""
    keys = [(n, rng.random() if rng else 0.0, i) for i, n in enumerate(lengths)]
    order = [i for _, _, i in sorted(keys)]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        rng.shuffle(batches)
    return batches


def pad_batch(features: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
    """(T, B, F) zero-padded features of B sequences, each (T_b, F), and their lengths (B,)."""
    lengths = torch.tensor([len(f) for f in features])
    x = torch.zeros(int(lengths.max()), len(features), features[0].shape[1])
    for b, f in enumerate(features):
        x[: len(f), b] = torch.from_numpy(f)
    return x, lengths
