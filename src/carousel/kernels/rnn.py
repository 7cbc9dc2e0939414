"""Fused forward and hand-derived backward through time for the Elman RNN.

    h_t = φ(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh),    φ ∈ {tanh, sigmoid, relu}

The structure is the LSTM kernel's (see :mod:`carousel.kernels.lstm` and ``docs/bptt.md``,
section RNN); φ'(a) is taken from the output h_t itself, so only h_t is stored.

Shapes follow the legend in :mod:`carousel`: T, B, I, H, G = 1.
"""

from __future__ import annotations

import numba
import torch

from carousel.kernels._mkl import JIT, TR, N, gemm, vexp, vtanh
from carousel.kernels.common import Order, flat_weight_grads, np_, scratch

_PHI = {"tanh": 0, "sigmoid": 1, "relu": 2}


@numba.njit(**JIT)
def rnn_forward(gx, w_hh, phi, perm, lengths, nlive, rev, h, out, work, z, si, sf):
    """gx (T, B, H) = W_ih x + b_ih + b_hh; h (B, H) initial → final state (kernel order);
    out (T, B, H) zeros: h_t.  work (B, H), z (1, B·H): scratch."""
    T = gx.shape[0]
    H = h.shape[1]
    za = z[0]
    for t in range(T):
        n = nlive[t]
        gemm(N, TR, n, H, H, 1.0, h, H, w_hh, H, 0.0, work, H, si, sf)  # (n, H)
        for j in range(n):
            b = perm[j]
            pos = t if rev == 0 else lengths[b] - 1 - t
            base = j * H
            for k in range(H):  # (R1)
                a = gx[pos, b, k] + work[j, k]
                za[base + k] = -a if phi == 1 else a
        if phi == 0:
            vtanh(za, n * H)
        elif phi == 1:
            vexp(za, n * H)
        for j in range(n):
            b = perm[j]
            pos = t if rev == 0 else lengths[b] - 1 - t
            base = j * H
            for k in range(H):
                a = za[base + k]
                if phi == 1:
                    a = 1.0 / (1.0 + a)
                elif phi == 2:
                    a = max(a, 0.0)
                h[j, k] = a
                out[pos, b, k] = a


@numba.njit(**JIT)
def rnn_backward(out, h0, w_hh, phi, perm, lengths, nlive, rev, dout, dh, dA, hprev, dst, si, sf):
    """dh (B, H): in ∂L/∂h_n, out ∂L/∂h_0 (kernel order).  dA (T, B, H) zeros: ∂L/∂a.
    hprev (T, B, H) zeros: h_{t−1} of each step.  dst (B, H): scratch."""
    T = out.shape[0]
    H = dh.shape[1]
    for t in range(T - 1, -1, -1):
        n = nlive[t]
        for j in range(n):
            b = perm[j]
            pos = t if rev == 0 else lengths[b] - 1 - t
            pp = pos - 1 if rev == 0 else pos + 1
            for k in range(H):
                hprev[pos, b, k] = h0[b, k] if t == 0 else out[pp, b, k]
                dhv = dh[j, k] + dout[pos, b, k]  # (RB1)
                hv = out[pos, b, k]
                if phi == 0:  # (RB2)
                    da = dhv * (1.0 - hv * hv)
                elif phi == 1:
                    da = dhv * hv * (1.0 - hv)
                else:
                    da = dhv if hv > 0.0 else 0.0
                dA[pos, b, k] = da
                dst[j, k] = da
        gemm(N, N, n, H, H, 1.0, dst, H, w_hh, H, 0.0, dh, H, si, sf)  # (RB3)


class RNNFunction(torch.autograd.Function):
    """One direction of one Elman RNN layer over a whole sequence, fused."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, phi, lengths, reverse):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        dtype = x.dtype
        order = Order(T, B, lengths)
        x2 = x.reshape(T * B, -1)
        bias = b_ih if b_hh is None else (b_hh if b_ih is None else b_ih + b_hh)
        gx = x2.mm(w_ih.t()) if bias is None else torch.addmm(bias, x2, w_ih.t())
        gx = gx.view(T, B, H)  # all steps in one product
        h = order.sort(h0)
        out = torch.zeros(T, B, H, dtype=dtype)
        work = torch.empty(B, H, dtype=dtype)
        z = torch.empty(1, B * H, dtype=dtype)
        si, sf = scratch(dtype)
        perm, lens, nlive = order.arrays()
        w_hh_c = w_hh.detach().contiguous()
        rnn_forward(
            np_(gx), np_(w_hh_c), phi, perm, lens, nlive, int(reverse), np_(h), np_(out),
            np_(work), np_(z), si, sf,
        )  # fmt: skip
        ctx.save_for_backward(x, h0, w_ih, w_hh_c, out)
        ctx.order, ctx.reverse, ctx.phi = order, reverse, phi
        ctx.has_bias = (b_ih is not None, b_hh is not None)
        return out, order.unsort(h)

    @staticmethod
    def backward(ctx, dout, dh_n):
        x, h0, w_ih, w_hh, out = ctx.saved_tensors
        order = ctx.order
        T, B, _ = x.shape
        H = w_hh.shape[1]
        dtype = x.dtype
        dh = order.sort(dh_n)
        dA = torch.zeros(T, B, H, dtype=dtype)
        hprev = torch.zeros(T, B, H, dtype=dtype)
        dst = torch.empty(B, H, dtype=dtype)
        si, sf = scratch(dtype)
        perm, lens, nlive = order.arrays()
        rnn_backward(
            np_(out), np_(h0.contiguous()), np_(w_hh), ctx.phi, perm, lens, nlive,
            int(ctx.reverse), np_(dout.contiguous()), np_(dh), np_(dA), np_(hprev), np_(dst),
            si, sf,
        )  # fmt: skip
        nd = ctx.needs_input_grad
        dx, dw_ih, dw_hh, db = flat_weight_grads(
            dA, x, hprev, w_ih, (nd[0], nd[2], nd[3], nd[4] or nd[5])
        )
        dh0 = order.unsort(dh) if nd[1] else None
        db_ih = db if ctx.has_bias[0] and nd[4] else None
        db_hh = db.clone() if ctx.has_bias[1] and nd[5] else None  # no shared .grad
        return dx, dh0, dw_ih, dw_hh, db_ih, db_hh, None, None, None


def sequence(cell, x, state, weights, lengths, reverse):
    """The fused Elman RNN backend (the signature of ``reference_sequence``)."""
    out, h_n = RNNFunction.apply(
        x,
        state[0],
        weights.w_ih,
        weights.w_hh,
        weights.b_ih,
        weights.b_hh,
        _PHI[cell.nonlinearity],
        lengths,
        reverse,
    )
    return out, (h_n,)
