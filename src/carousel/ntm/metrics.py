"""The loss and the costs of the memory tasks, as the NTM paper reports them.

Every function takes the model's logits (T, B, O), the target bits (T, B, O) and the mask
(T, B) of the steps that carry a target (the output phase of each sequence).

- :func:`bce_loss`: binary cross-entropy from logits, averaged over the target bits (what
  training minimises; the mean keeps its scale independent of the sequence length).
- :func:`bits_per_sequence`: the same cross-entropy summed over each sequence, in bits,
  averaged over the batch (the paper's "cost per sequence (bits)").
- :func:`bit_errors`: outputs thresholded at 0.5 (logit > 0), the wrong bits of each
  sequence, averaged over the batch (pytorch-ntm's and Collier & Beel's "bit errors per
  sequence").
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def _check(logits: Tensor, target: Tensor, mask: Tensor) -> None:
    if logits.shape != target.shape or logits.dim() != 3:
        raise ValueError(
            f"expected logits and target of one shape (T, B, O); got {tuple(logits.shape)} "
            f"and {tuple(target.shape)}"
        )
    if mask.shape != logits.shape[:2]:
        raise ValueError(
            f"expected mask (T, B) = {tuple(logits.shape[:2])}; got {tuple(mask.shape)}"
        )


def _masked_bce(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Cross-entropy in nats of every bit, zero where ``mask`` is off: (T, B, O)."""
    _check(logits, target, mask)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return bce * mask.unsqueeze(-1).to(bce.dtype)


def bce_loss(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean binary cross-entropy (nats) over the target bits: the training loss."""
    n_bits = mask.sum() * logits.size(-1)
    return _masked_bce(logits, target, mask).sum() / n_bits.clamp_min(1)


def bits_per_sequence(logits: Tensor, target: Tensor, mask: Tensor) -> float:
    """Cross-entropy summed over each sequence's target bits, in bits, mean over B."""
    total = _masked_bce(logits.detach(), target, mask).sum().item()
    return total / math.log(2) / logits.size(1)


def bit_errors(logits: Tensor, target: Tensor, mask: Tensor) -> float:
    """Wrong bits per sequence after thresholding the outputs at 0.5, mean over B."""
    _check(logits, target, mask)
    wrong = ((logits.detach() > 0).to(target.dtype) != target) & mask.unsqueeze(-1)
    return wrong.sum().item() / logits.size(1)


def sequence_bit_errors(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Wrong bits of each sequence, (B,) int64."""
    _check(logits, target, mask)
    wrong = ((logits.detach() > 0).to(target.dtype) != target) & mask.unsqueeze(-1)
    return wrong.sum(dim=(0, 2))


__all__ = ["bce_loss", "bit_errors", "bits_per_sequence", "sequence_bit_errors"]
