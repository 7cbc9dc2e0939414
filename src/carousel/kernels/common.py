"""What every fused kernel shares: the batch order that skips padding, and numpy views.

Variable lengths do no work on padding: the batch is ordered by length, longest first, so at
step t the sequences still running are a prefix ``perm[:nlive[t]]`` and the recurrent product
is one GEMM over that prefix, as in a ``PackedSequence``.  States are carried in that order
inside the kernels; everything stored per step is indexed by the sequence's own time position
``pos`` (``t``, or ``lengths[b] − 1 − t`` for the reverse direction), so inputs, outputs and
gradients stay in the caller's (T, B, ·) layout and the big products over all steps need no
reordering.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor


@functools.lru_cache(maxsize=64)
def _identity(T: int, B: int) -> tuple[Tensor, Tensor, Tensor]:
    """perm, lengths, nlive of a batch without padding (cached: the kernels only read them)."""
    perm = torch.arange(B)
    lengths = torch.full((B,), T, dtype=torch.int64)
    nlive = torch.full((T,), B, dtype=torch.int64)
    return perm, lengths, nlive


class Order:
    """The batch order of one call: ``perm`` (B,), ``lengths`` (B,), ``nlive`` (T,), int64."""

    def __init__(self, T: int, B: int, lengths: Tensor | None) -> None:
        if lengths is None:
            self.perm, self.lengths, self.nlive = _identity(T, B)
            self.identity = True
        else:
            lengths = lengths.to(device="cpu", dtype=torch.int64)
            self.perm = torch.argsort(lengths, descending=True, stable=True)
            self.lengths = lengths.contiguous()
            steps = torch.arange(T).unsqueeze(1)  # (T, 1)
            self.nlive = (lengths.unsqueeze(0) > steps).sum(1)  # (T,)
            self.identity = False

    def sort(self, state: Tensor) -> Tensor:
        """(B, H) in batch order -> a fresh contiguous copy in kernel (length) order."""
        if self.identity:
            return state.detach().clone(memory_format=torch.contiguous_format)
        return state.detach().index_select(0, self.perm).contiguous()

    def unsort(self, state: Tensor) -> Tensor:
        """(B, H) in kernel order -> batch order."""
        if self.identity:
            return state
        out = torch.empty_like(state)
        out[self.perm] = state
        return out

    def buffer(self, T: int, B: int, width: int, dtype: torch.dtype) -> Tensor:
        """A (T, B, width) buffer every live step writes: zeros where there is padding (the
        kernels never touch it), left uninitialised when there is none."""
        if self.identity:
            return torch.empty(T, B, width, dtype=dtype)
        return torch.zeros(T, B, width, dtype=dtype)

    def packed(self, dtype: torch.dtype) -> int:
        """Whether the kernels may use MKL's packed weights (float32; every step over all B
        rows, since a packed matrix serves one product shape)."""
        return int(self.identity and dtype == torch.float32)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.perm.numpy(), self.lengths.numpy(), self.nlive.numpy()


def np_(t: Tensor) -> np.ndarray:
    """A numpy view of a contiguous CPU tensor (no copy, no autograd)."""
    return t.detach().numpy()


def scratch(dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The by-reference scalar buffers the Fortran GEMM needs (see :func:`_mkl.gemm`)."""
    return np.zeros(8, np.int32), np.zeros(2, np.float32 if dtype == torch.float32 else np.float64)


def flat_weight_grads(
    dA: Tensor, x: Tensor, hprev: Tensor, w_ih: Tensor, needs: tuple[bool, ...]
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """The big products over all steps: dx, dW_ih, dW_hh and the bias gradient.

    dA (T, B, G·H) is the gradient of the gates' pre-activations (zero on padding), x (T, B, I)
    the input, hprev (T, B, H) the state each step read.  ``needs`` = (x, w_ih, w_hh, bias).
    """
    T, B, GH = dA.shape
    dA2 = dA.view(T * B, GH)  # (B10) of docs/bptt.md: one product each, over all steps
    dx = dA2.mm(w_ih).view(T, B, -1) if needs[0] else None
    dw_ih = dA2.t().mm(x.reshape(T * B, -1)) if needs[1] else None
    dw_hh = dA2.t().mm(hprev.view(T * B, -1)) if needs[2] else None
    db = dA2.sum(0) if needs[3] else None
    return dx, dw_ih, dw_hh, db
