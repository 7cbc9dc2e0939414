"""Fused forward and hand-derived backward through time for the Elman RNN.

The derivation (the code below follows it; the comments carry the line tags), with
δv = ∂L/∂v and (B, H) rows:

    (R1)  h_t = φ(a),   a = W_ih x_t + b_ih + W_hh h_{t−1} + b_hh,   φ ∈ {tanh, sigmoid, relu}

Backward, walking t = T−1 … 0 with δh_t^rec, the gradient reaching h_t through step t + 1's
recurrent product (it starts at δh_n):

    (RB1) δh_t = ∂L/∂y_t + δh_t^rec
    (RB2) δa   = δh_t ⊙ φ'(a),   φ' from h_t itself: 1 − h², h(1 − h), or [h > 0]
    (RB3) δh_{t−1}^rec = δa W_hh
    (RB4) δX = δA W_ih,   δW_ih = δAᵀ X,   δW_hh = δAᵀ H_prev,   δb_ih = δb_hh = Σ_{t,b} δA

φ'(a) is taken from the output h_t itself, so only h_t is stored.  The structure is the LSTM
kernel's (:mod:`carousel.kernels.lstm`); lengths, direction and bfloat16 products as
``docs/bptt.md`` describes for every family.

Shapes follow the legend in :mod:`carousel`: T, B, I, H, G = 1.
"""

from __future__ import annotations

import numba
import torch
from torch.autograd.function import once_differentiable

from carousel.kernels._mkl import (
    JIT,
    TR,
    N,
    copy,
    prepare_pack,
    restore_threads,
    step_gemm,
    step_threads,
    vexp,
    vtanh,
)
from carousel.kernels.common import (
    Order,
    bf16_wanted,
    flat_weight_grads,
    input_products,
    no_autocast,
    np_,
    scratch,
)

_PHI = {"tanh": 0, "sigmoid": 1, "relu": 2}


@numba.njit(**JIT)
def rnn_forward(gx, w_hh, phi, perm, lengths, nlive, rev, packed, h, out, work, z, si, sf):
    """gx (T, B, H) = W_ih x + b_ih + b_hh; h (B, H) initial → final state (kernel order);
    out (T, B, H) zeros: h_t.  work (B, H), z (1, B·H): scratch."""
    T = gx.shape[0]
    H = h.shape[1]
    za = z[0]
    one = h.dtype.type(1.0)
    zero = h.dtype.type(0.0)
    hf = h.reshape(-1)
    pk = prepare_pack(packed, TR, nlive[0], H, H, w_hh, H)
    old_threads = step_threads(nlive[0], H, H)
    for t in range(T):
        n = nlive[t]
        m = n * H
        step_gemm(pk, packed, N, TR, n, H, H, h, H, w_hh, H, 0.0, work, H, si, sf)  # (n, H)
        for j in range(n):  # (R1) a = W_ih x_t + b + W_hh h_{t−1}
            b = perm[j]
            pos = t if rev == 0 else lengths[b] - 1 - t
            row = gx[pos, b]
            wr = work[j]
            base = j * H
            if phi == 1:
                for k in range(H):
                    za[base + k] = -(row[k] + wr[k])
            else:
                for k in range(H):
                    za[base + k] = row[k] + wr[k]
        if phi == 0:
            vtanh(za, m)
            copy(hf, 0, za, 0, m)
        elif phi == 1:
            vexp(za, m)
            for q in range(m):
                hf[q] = one / (one + za[q])
        else:
            for q in range(m):
                hf[q] = max(za[q], zero)
        for j in range(n):
            b = perm[j]
            pos = t if rev == 0 else lengths[b] - 1 - t
            copy(out[pos, b], 0, h[j], 0, H)
    restore_threads(old_threads)


@numba.njit(**JIT)
def rnn_backward(
    out, h0, w_hh, phi, perm, lengths, nlive, rev, packed, dout, dh, dA, hprev, dst, z, si, sf
):
    """dh (B, H): in ∂L/∂h_n, out ∂L/∂h_0 (kernel order).  dA (T, B, H) zeros: ∂L/∂a.
    hprev (T, B, H) zeros: h_{t−1} of each step.  dst (B, H), z (1, B·H): scratch."""
    T = out.shape[0]
    H = dh.shape[1]
    zh = z[0]
    one = dh.dtype.type(1.0)
    zero = dh.dtype.type(0.0)
    dhf = dh.reshape(-1)
    dsf = dst.reshape(-1)
    pk = prepare_pack(packed, N, nlive[0], H, H, w_hh, H)
    old_threads = step_threads(nlive[0], H, H)
    for t in range(T - 1, -1, -1):
        n = nlive[t]
        m = n * H
        for j in range(n):
            b = perm[j]
            pos = t if rev == 0 else lengths[b] - 1 - t
            pp = pos - 1 if rev == 0 else pos + 1
            if t == 0:
                copy(hprev[pos, b], 0, h0[b], 0, H)
            else:
                copy(hprev[pos, b], 0, out[pp, b], 0, H)
            copy(zh, j * H, out[pos, b], 0, H)
            dhj = dh[j]
            do = dout[pos, b]
            for k in range(H):  # (RB1)
                dhj[k] += do[k]
        if phi == 0:  # (RB2)
            for q in range(m):
                dsf[q] = dhf[q] * (one - zh[q] * zh[q])
        elif phi == 1:
            for q in range(m):
                dsf[q] = dhf[q] * zh[q] * (one - zh[q])
        else:
            for q in range(m):
                dsf[q] = dhf[q] if zh[q] > zero else zero
        for j in range(n):
            b = perm[j]
            pos = t if rev == 0 else lengths[b] - 1 - t
            copy(dA[pos, b], 0, dst[j], 0, H)
        step_gemm(pk, packed, N, N, n, H, H, dst, H, w_hh, H, 0.0, dh, H, si, sf)  # (RB3)
    restore_threads(old_threads)


class RNNFunction(torch.autograd.Function):
    """One direction of one Elman RNN layer over a whole sequence, fused."""

    @staticmethod
    @no_autocast
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, phi, lengths, reverse, bf16):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        dtype = x.dtype
        order = Order(T, B, lengths)
        x2 = x.reshape(T * B, -1)
        bias = b_ih if b_hh is None else (b_hh if b_ih is None else b_ih + b_hh)
        gx = input_products(x2, w_ih, bias, bf16).view(T, B, H)  # all steps in one product
        h = order.sort(h0)
        out = order.buffer(T, B, H, dtype=dtype)
        work = torch.empty(B, H, dtype=dtype)
        z = torch.empty(1, B * H, dtype=dtype)
        si, sf = scratch(dtype)
        perm, lens, nlive = order.arrays()
        w_hh_c = w_hh.detach().contiguous()
        rnn_forward(
            np_(gx),
            np_(w_hh_c),
            phi,
            perm,
            lens,
            nlive,
            int(reverse),
            order.packed(dtype, bf16),
            np_(h),
            np_(out),
            np_(work),
            np_(z),
            si,
            sf,
        )
        ctx.save_for_backward(x, h0, w_ih, w_hh_c, out)
        ctx.order, ctx.reverse, ctx.phi, ctx.bf16 = order, reverse, phi, bf16
        ctx.has_bias = (b_ih is not None, b_hh is not None)
        return out, order.unsort(h)

    @staticmethod
    @once_differentiable
    @no_autocast
    def backward(ctx, dout, dh_n):
        x, h0, w_ih, w_hh, out = ctx.saved_tensors
        order = ctx.order
        T, B, _ = x.shape
        H = w_hh.shape[1]
        dtype = x.dtype
        dh = order.sort(dh_n)
        dA = order.buffer(T, B, H, dtype=dtype)
        hprev = order.buffer(T, B, H, dtype=dtype)
        dst = torch.empty(B, H, dtype=dtype)
        z = torch.empty(1, B * H, dtype=dtype)
        si, sf = scratch(dtype)
        perm, lens, nlive = order.arrays()
        rnn_backward(
            np_(out),
            np_(h0.contiguous()),
            np_(w_hh),
            ctx.phi,
            perm,
            lens,
            nlive,
            int(ctx.reverse),
            order.packed(dtype, ctx.bf16),
            np_(dout.contiguous()),
            np_(dh),
            np_(dA),
            np_(hprev),
            np_(dst),
            np_(z),
            si,
            sf,
        )
        nd = ctx.needs_input_grad
        dx, dw_ih, dw_hh, db = flat_weight_grads(  # (RB4)
            dA, x, hprev, w_ih, (nd[0], nd[2], nd[3], nd[4] or nd[5]), ctx.bf16
        )
        dh0 = order.unsort(dh) if nd[1] else None
        db_ih = db if ctx.has_bias[0] and nd[4] else None
        db_hh = db.clone() if ctx.has_bias[1] and nd[5] else None  # no shared .grad
        return dx, dh0, dw_ih, dw_hh, db_ih, db_hh, None, None, None, None


def arguments(cell, x, state, weights, lengths, reverse) -> tuple:
    """The arguments of :class:`RNNFunction` for one direction of one layer."""
    return (
        x,
        state[0],
        weights.w_ih,
        weights.w_hh,
        weights.b_ih,
        weights.b_hh,
        _PHI[cell.nonlinearity],
        lengths,
        reverse,
        bf16_wanted(x),
    )


def finish(outputs):
    """(output, final state) from :class:`RNNFunction`'s outputs."""
    out, h_n = outputs
    return out, (h_n,)


FUNCTION = RNNFunction
