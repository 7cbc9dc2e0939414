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
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from carousel.kernels._mkl import BF16, PACKED, PLAIN, TR, N, mm_bf16

#: bfloat16 per-step products from this many rows up; below, the per-step products stay
#: float32 (MKL's bfloat16 GEMM re-packs the weights at every call, which a few rows do not
#: repay; BENCHMARKS.md, "bfloat16") while the products over all steps still run in bfloat16.
BF16_STEP_ROWS = 32


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

    def packed(self, dtype: torch.dtype, bf16: bool = False) -> int:
        """How the kernels run the per-step product (:func:`carousel.kernels._mkl.step_gemm`):
        BF16 when asked for and the batch has at least :data:`BF16_STEP_ROWS` rows; PACKED,
        MKL's packed weights, for float32 with every step over all B rows (a packed matrix
        serves one product shape); else PLAIN."""
        if bf16 and int(self.nlive[0]) >= BF16_STEP_ROWS:
            return BF16
        return PACKED if self.identity and dtype == torch.float32 else PLAIN

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.perm.numpy(), self.lengths.numpy(), self.nlive.numpy()


def np_(t: Tensor) -> np.ndarray:
    """A numpy view of a contiguous CPU tensor (no copy, no autograd)."""
    return t.detach().numpy()


def scratch(dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The by-reference scalar buffers the Fortran GEMM needs (see :func:`_mkl.gemm`)."""
    return np.zeros(8, np.int32), np.zeros(2, np.float32 if dtype == torch.float32 else np.float64)


def bf16_wanted(x: Tensor) -> bool:
    """Whether a fused kernel on ``x`` runs its matrix products in bfloat16: ``x`` is float32
    and the caller is inside ``torch.autocast("cpu", dtype=torch.bfloat16)``."""
    return (
        x.dtype == torch.float32
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


def no_autocast(fn: Callable) -> Callable:
    """Run ``fn`` (a Function's forward or backward) with CPU autocast off: the kernels pick
    each product's precision themselves."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.autocast("cpu", enabled=False):
            return fn(*args, **kwargs)

    return wrapper


def _bf16_operand(t: Tensor) -> tuple[int, np.ndarray, int]:
    """(trans, bfloat16 bits, leading dimension) of a 2-D operand, transposed views free."""
    if not t.is_contiguous() and t.t().is_contiguous():
        return TR, _bits(t.t()), t.size(0)
    return N, _bits(t.contiguous()), t.size(1)


def _bits(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16).reshape(-1)


def matmul(a: Tensor, b: Tensor, bf16: bool, out: Tensor | None = None) -> Tensor:
    """a (m, k) @ b (k, n), added to ``out`` (m, n) when given.

    With ``bf16`` the operands are rounded to bfloat16 (free if they already are) and the
    product accumulates in float32 (MKL's ``cblas_gemm_bf16bf16f32``); the result is float32.
    """
    if not bf16:
        return a.mm(b) if out is None else out.addmm_(a, b)
    (m, k), n = a.shape, b.size(1)
    ta, A, lda = _bf16_operand(a)
    tb, B, ldb = _bf16_operand(b)
    beta = 0.0 if out is None else 1.0
    if out is None:
        out = torch.empty(m, n, dtype=torch.float32)
    mm_bf16(ta, tb, m, n, k, A, lda, B, ldb, beta, np_(out).reshape(-1), n)
    return out


def input_products(x: Tensor, w_ih: Tensor, bias: Tensor | None, bf16: bool) -> Tensor:
    """W_ih x_t + bias for all steps in one product: (T·B, I) -> (T·B, G·H)."""
    if bias is None:
        return matmul(x, w_ih.t(), bf16)
    out = bias.detach().expand(x.size(0), -1).contiguous()
    return matmul(x, w_ih.t(), bf16, out=out)


def flat_weight_grads(
    dA: Tensor,
    x: Tensor,
    hprev: Tensor,
    w_ih: Tensor,
    needs: tuple[bool, ...],
    bf16: bool = False,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """The big products over all steps: dx, dW_ih, dW_hh and the bias gradient.

    dA (T, B, G·H) is the gradient of the gates' pre-activations (zero on padding), x (T, B, I)
    the input, hprev (T, B, H) the state each step read.  ``needs`` = (x, w_ih, w_hh, bias).
    With ``bf16`` the products take bfloat16 operands and accumulate in float32.
    """
    T, B, GH = dA.shape
    dA2 = dA.view(T * B, GH)  # (B10) of docs/bptt.md: one product each, over all steps
    db = dA2.sum(0) if needs[3] else None
    x2, h2 = x.reshape(T * B, -1), hprev.view(T * B, -1)
    if bf16:  # round each operand once, not once per product
        dA2 = dA2.to(torch.bfloat16)
        x2 = x2.to(torch.bfloat16) if needs[1] else x2
        h2 = h2.to(torch.bfloat16) if needs[2] else h2
    dx = matmul(dA2, w_ih, bf16).view(T, B, -1) if needs[0] else None
    dw_ih = matmul(dA2.t(), x2, bf16) if needs[1] else None
    dw_hh = matmul(dA2.t(), h2, bf16) if needs[2] else None
    return dx, dw_ih, dw_hh, db
