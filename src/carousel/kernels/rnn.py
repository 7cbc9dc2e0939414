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

Variational recurrent dropout (one mask m (B, H) per sequence, :mod:`carousel.cells.masks`):

    (RR1) a = W_ih x_t + b_ih + W_hh (m ⊙ h_{t−1}) + b_hh
    (RRB) δh_{t−1}^rec = (δa W_hh) ⊙ m in place of (RB3), and H_prev in (RB4) holds m ⊙ h_{t−1}

Zoneout on h is not in this kernel (φ'(a) would need h̃_t, which is not h_t): it runs on the
reference path.

φ'(a) is taken from the output h_t itself, so only h_t is stored.  The structure is the LSTM
kernel's (:mod:`carousel.kernels.lstm`); lengths, direction and bfloat16 products as
``docs/bptt.md`` describes for every family.

Shapes follow the legend in :mod:`carousel`: T, B, I, H, G = 1.
"""

from __future__ import annotations

import numba
import torch

from carousel.backends import LayerWeights
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
    flat_weight_grads,
    input_products,
    np_,
    scratch,
)

_PHI = {"tanh": 0, "sigmoid": 1, "relu": 2}


@numba.njit(**JIT)
def rnn_forward(
    gx, w_hh, phi, perm, lengths, nlive, rev, packed, h, out, work, z, si, sf, rec_d, rdm, hm
):
    """gx (T, B, H) = W_ih x + b_ih + b_hh; h (B, H) initial → final state (kernel order);
    out (T, B, H) zeros: h_t.  work (B, H), z (1, B·H): scratch.  rec_d: recurrent dropout
    with the masks rdm (B, H) (a dummy without); hm (B, H): scratch."""
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
        if rec_d:  # (RR1) the product reads m ⊙ h_{t−1}
            for j in range(n):
                mr = rdm[perm[j]]
                hj = h[j]
                hmj = hm[j]
                for k in range(H):
                    hmj[k] = mr[k] * hj[k]
            step_gemm(pk, packed, N, TR, n, H, H, hm, H, w_hh, H, 0.0, work, H, si, sf)
        else:
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
    out, h0, w_hh, phi, perm, lengths, nlive, rev, packed, dout, dh, dA, hprev, dst, z, si, sf,
    rec_d, rdm,
):  # fmt: skip
    """dh (B, H): in ∂L/∂h_n, out ∂L/∂h_0 (kernel order).  dA (T, B, H) zeros: ∂L/∂a.
    hprev (T, B, H) zeros: h_{t−1} of each step.  dst (B, H), z (1, B·H): scratch.  rec_d,
    rdm: recurrent dropout, as :func:`rnn_forward`."""
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
            if rec_d:  # (RRB) H_prev holds the product's operand m ⊙ h_{t−1}
                hp = hprev[pos, b]
                mr = rdm[b]
                for k in range(H):
                    hp[k] = mr[k] * hp[k]
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
        if rec_d:  # (RRB) δh_{t−1}^rec = (δa W_hh) ⊙ m
            for j in range(n):
                mr = rdm[perm[j]]
                dhj = dh[j]
                for k in range(H):
                    dhj[k] = mr[k] * dhj[k]
    restore_threads(old_threads)


class RNNKernel:
    """One direction of one Elman RNN layer over a whole sequence, fused: the kernel protocol
    of :mod:`carousel.kernels.common` (which supplies the autograd)."""

    #: nothing saved besides inputs and outputs: φ'(a) comes from h_t itself
    n_saved = 0

    @staticmethod
    def forward(call, x, state, weights):
        (h0,) = state
        w = weights
        T, B, _ = x.shape
        H = w.w_hh.shape[1]
        dtype = x.dtype
        order, bf16 = call.order, call.bf16
        x2 = x.reshape(T * B, -1)
        bias = w.b_ih if w.b_hh is None else (w.b_hh if w.b_ih is None else w.b_ih + w.b_hh)
        gx = input_products(x2, w.w_ih, bias, bf16).view(T, B, H)  # all steps in one product
        h = order.sort(h0)
        out = order.buffer(T, B, H, dtype=dtype)
        work = torch.empty(B, H, dtype=dtype)
        z = torch.empty(1, B * H, dtype=dtype)
        si, sf = scratch(dtype)
        perm, lens, nlive = order.arrays()
        rec_d, rdm = _recurrent_mask(call.masks, B, H, dtype)
        hm = torch.empty(B if rec_d else 1, H, dtype=dtype)
        rnn_forward(
            np_(gx),
            np_(w.w_hh),
            _PHI[call.cell.nonlinearity],
            perm,
            lens,
            nlive,
            int(call.reverse),
            order.packed(dtype, bf16),
            np_(h),
            np_(out),
            np_(work),
            np_(z),
            si,
            sf,
            rec_d,
            np_(rdm),
            np_(hm),
        )
        return out, (order.unsort(h),), ()

    @staticmethod
    def backward(call, x, state, weights, out, final, saved, dout, dfinal, needs):
        (h0,) = state
        w = weights
        order = call.order
        T, B, _ = x.shape
        H = w.w_hh.shape[1]
        dtype = x.dtype
        dh = order.sort(dfinal[0])
        dA = order.buffer(T, B, H, dtype=dtype)
        hprev = order.buffer(T, B, H, dtype=dtype)
        dst = torch.empty(B, H, dtype=dtype)
        z = torch.empty(1, B * H, dtype=dtype)
        si, sf = scratch(dtype)
        perm, lens, nlive = order.arrays()
        rec_d, rdm = _recurrent_mask(call.masks, B, H, dtype)
        rnn_backward(
            np_(out),
            np_(h0),
            np_(w.w_hh),
            _PHI[call.cell.nonlinearity],
            perm,
            lens,
            nlive,
            int(call.reverse),
            order.packed(dtype, call.bf16),
            np_(dout),
            np_(dh),
            np_(dA),
            np_(hprev),
            np_(dst),
            np_(z),
            si,
            sf,
            rec_d,
            np_(rdm),
        )
        nx, _, nw = needs
        dx, dw_ih, dw_hh, db = flat_weight_grads(  # (RB4)
            dA, x, hprev, w.w_ih, (nx, nw.w_ih, nw.w_hh, nw.b_ih or nw.b_hh), call.bf16
        )
        db_ih = db if nw.b_ih else None
        db_hh = (db.clone() if nw.b_ih else db) if nw.b_hh else None  # no shared .grad
        return dx, (order.unsort(dh),), LayerWeights(dw_ih, dw_hh, db_ih, db_hh, {})


#: the regularisers the kernel runs (what :func:`carousel.kernels.features` reports)
FEATURES = frozenset({"recurrent_dropout"})


def _recurrent_mask(masks, B: int, H: int, dtype: torch.dtype) -> tuple[int, torch.Tensor]:
    """(whether there is recurrent dropout, its mask (B, H) in ``dtype`` or a dummy)."""
    if masks is None or masks.recurrent is None:
        return 0, torch.zeros(1, 1, dtype=dtype)
    return 1, masks.recurrent.detach().to(dtype).contiguous()


KERNEL = RNNKernel()
