"""The output layer and its loss in one: linear → softmax → cross-entropy, fused on the CPU.

A word model's 10,000-way softmax costs more than its recurrent layers.  Through torch ops,
the logits (N, V) are written by the product, copied, read and written by ``log_softmax``,
then read and written twice more in the backward pass.  Here the product writes them once;
the forward pass reads each row once more (max, exp, sum: the row's log-sum-exp) and keeps
them; the backward pass turns them in place into ∂L/∂logits = (softmax − one-hot)·g/N, one
row at a time while the row is in cache, and two products give ∂L/∂h and ∂L/∂W.

Shapes: N = T·B positions, H features, V classes.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from carousel.kernels._mkl import JIT, to_bf16, vexp
from carousel.kernels.common import bf16_wanted, input_products, matmul, no_autocast, np_

_LANES = 16


@numba.njit(**JIT)
def _sum(x, n):
    """x[:n].sum() in 16 lanes (a fixed order, so it vectorises without fastmath)."""
    acc = np.zeros(_LANES, x.dtype)
    full = n - n % _LANES
    for k0 in range(0, full, _LANES):
        for j in range(_LANES):
            acc[j] += x[k0 + j]
    total = x.dtype.type(0.0)
    for j in range(_LANES):
        total += acc[j]
    for k in range(full, n):
        total += x[k]
    return total


@numba.njit(**JIT)
def _max(x, n):
    """x[:n].max() (n ≥ 1) in 16 lanes, so it vectorises."""
    acc = np.empty(_LANES, x.dtype)
    for j in range(_LANES):
        acc[j] = x[0]
    full = n - n % _LANES
    for k0 in range(0, full, _LANES):
        for j in range(_LANES):
            v = x[k0 + j]
            acc[j] = v if v > acc[j] else acc[j]
    m = acc[0]
    for j in range(1, _LANES):
        m = acc[j] if acc[j] > m else m
    for k in range(full, n):
        m = x[k] if x[k] > m else m
    return m


@numba.njit(**JIT)
def ce_forward(logits, target, lse, row):
    """lse[r] = log Σ_v exp(logits[r, v]); returns Σ_r lse[r] − logits[r, target[r]] (float64).

    logits (N, V) is only read; ``row`` (V,) is scratch."""
    N, V = logits.shape
    total = 0.0
    for r in range(N):
        lr = logits[r]
        m = _max(lr, V)
        for k in range(V):
            row[k] = lr[k] - m
        vexp(row, V)
        lse[r] = m + math.log(_sum(row, V))
        total += lse[r] - lr[target[r]]
    return total


@numba.njit(**JIT)
def ce_backward(logits, target, lse, scale, db, out16, bf16):
    """logits (N, V) ← (softmax(logits) − one-hot(target)) · scale, in place, row by row while
    the row is in cache: db (V,) += the rows, and with ``bf16`` each row is also rounded into
    ``out16`` (N·V,) uint16, the bfloat16 operand of the products that follow."""
    N, V = logits.shape
    for r in range(N):
        lr = logits[r]
        s = lse[r]
        for k in range(V):
            lr[k] -= s
        vexp(lr, V)
        lr[target[r]] -= 1.0
        for k in range(V):
            lr[k] *= scale
        for k in range(V):
            db[k] += lr[k]
        if bf16:
            to_bf16(lr, out16[r * V : (r + 1) * V], V)


class LinearCrossEntropy(torch.autograd.Function):
    """Mean over N positions of −log softmax(h Wᵀ + b)[target]."""

    @staticmethod
    @no_autocast
    def forward(ctx, h, weight, bias, target, bf16):
        logits = input_products(h, weight, bias, bf16)  # (N, V), float
        lse = torch.empty(h.size(0), dtype=logits.dtype)
        tgt = target.to(torch.int64).contiguous()
        row = np.empty(logits.size(1), np_(logits).dtype)
        total = ce_forward(np_(logits), tgt.numpy(), np_(lse), row)
        ctx.save_for_backward(h, weight, bias, logits, lse, tgt)
        ctx.bf16, ctx.has_bias, ctx.spent = bf16, bias is not None, False
        return torch.tensor(total / h.size(0), dtype=h.dtype)

    @staticmethod
    @once_differentiable
    @no_autocast
    def backward(ctx, grad):
        h, weight, bias, logits, lse, tgt = ctx.saved_tensors
        if ctx.spent:  # a second backward (retain_graph): the first overwrote the logits
            logits = input_products(h, weight, bias, ctx.bf16)
        ctx.spent = True
        # the logits are not needed again: they become ∂L/∂logits in place
        N, V = logits.shape
        bf16 = ctx.bf16
        db = torch.zeros(V, dtype=logits.dtype)
        d16 = (
            torch.empty(N, V, dtype=torch.bfloat16)
            if bf16
            else torch.empty(1, 1, dtype=torch.int16)
        )
        out16 = d16.view(torch.int16).numpy().view(np.uint16).reshape(-1)
        ce_backward(np_(logits), tgt.numpy(), np_(lse), float(grad) / N, np_(db), out16, bf16)
        nd = ctx.needs_input_grad
        dlogits = d16 if bf16 else logits  # (N, V)
        dh = matmul(dlogits, weight, bf16) if nd[0] else None
        dw = matmul(dlogits.t(), h.to(torch.bfloat16) if bf16 else h, bf16) if nd[1] else None
        db = db if ctx.has_bias and nd[2] else None
        return dh, dw, db, None, None


def linear_cross_entropy(h: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor) -> Tensor:
    """The fused output layer's loss: h (N, H), weight (V, H), bias (V,), target (N,) ->
    mean cross-entropy in nats (a float scalar).  In bfloat16 under CPU bf16 autocast."""
    return LinearCrossEntropy.apply(h.contiguous(), weight, bias, target, bf16_wanted(h))
