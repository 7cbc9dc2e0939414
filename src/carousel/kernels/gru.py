"""Fused forward and hand-derived backward through time for the GRU (torch.nn.GRU's equations).

The derivation (the code below follows it; the comments carry the line tags).  Blocks are
stacked r, z, n; ⊙ is the elementwise product, σ the logistic function, δv = ∂L/∂v, all
vectors (B, H) rows.  The reset gate multiplies the recurrent share of the candidate, so b_hn
stays out of the input product:

    (G1)  r   = σ(W_ir x_t + b_ir + W_hr h_{t−1} + b_hr)
    (G2)  z   = σ(W_iz x_t + b_iz + W_hz h_{t−1} + b_hz)
    (G3)  n   = tanh(W_in x_t + b_in + r ⊙ ĝ),      ĝ = W_hn h_{t−1} + b_hn   (kept for (GB4))
    (G4)  h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}

Backward, walking t = T−1 … 0 with δh_t^rec, the gradient reaching h_t through step t + 1's
recurrent product (it starts at δh_n):

    (GB1) δh_t = ∂L/∂y_t + δh_t^rec
    (GB2) δa_n = δh_t ⊙ (1 − z) ⊙ (1 − n²)
    (GB3) δa_z = δh_t ⊙ (h_{t−1} − n) ⊙ z(1 − z)
    (GB4) δa_r = δa_n ⊙ ĝ ⊙ r(1 − r)
    (GB5) input side δA_x = (δa_r, δa_z, δa_n); recurrent side δA_h = (δa_r, δa_z, r ⊙ δa_n)
    (GB6) δh_{t−1}^rec = z ⊙ δh_t + δA_h W_hh                    the direct path plus one GEMM
    (GB7) δX = δA_x W_ih,  δW_ih = δA_xᵀ X,  δb_ih = Σ δA_x,  δW_hh = δA_hᵀ H_prev,  δb_hh = Σ δA_h

H_prev (T·B, H) holds the h_{t−1} each step read.

Regularisers (the masks of :mod:`carousel.cells.masks`; absent in the plain cell):
variational recurrent dropout, one mask m (B, H) per sequence, and zoneout on h, d^h per
step and unit; h̃_t is what (G4) gives:

    (GR1) the recurrent products of (G1)–(G3) read m ⊙ h_{t−1}; the carry z ⊙ h_{t−1} of (G4)
          and (GB3) keep h_{t−1} itself
    (GZ1) h_t = d^h ⊙ h_{t−1} + (1 − d^h) ⊙ h̃_t
    (GZB) δh̃_t = (1 − d^h) ⊙ δh_t takes δh_t's place in (GB2)–(GB6); δh_{t−1}^rec gains
          d^h ⊙ δh_t
    (GRB) (GB6) is z ⊙ δh̃_t + (δA_h W_hh) ⊙ m, and H_prev in (GB7) holds m ⊙ h_{t−1}

The structure is the LSTM kernel's (:mod:`carousel.kernels.lstm`): input products for all
steps before the loop, per step one MKL GEMM over the live rows and one fused elementwise
pass, and (GB7) as products over all steps; lengths, direction and bfloat16 products as
``docs/bptt.md`` describes for every family.

Shapes follow the legend in :mod:`carousel`: T, B, I, H, G = 3.
"""

from __future__ import annotations

import numba
import numpy as np
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


@numba.njit(**JIT)
def gru_forward(
    gx, w_hh, b_hn, perm, lengths, nlive, rev, packed, h, out, ghn, work, z, si, sf,
    mflags, zhm, rdm, hm,
):  # fmt: skip
    """The forward time loop.

    gx (T, B, 3H): in, W_ih x + b_ih + (b_hr, b_hz, 0); out, the activations r, z, n.
    w_hh (3H, H); b_hn (H,).  h (B, H): initial state in kernel order, on return the final.
    out (T, B, H) zeros: h_t.  ghn (T, B, H): W_hn h_{t−1} + b_hn.  work (B, 3H), z (4, B·H).
    mflags (zoneout on h, recurrent dropout), zhm (T, B, H), rdm (B, H): the masks (dummies
    where absent); hm (B, H): scratch.
    Short loops over contiguous rows, in the arrays' dtype, so that they vectorise.
    """
    T = gx.shape[0]
    H = h.shape[1]
    zr, zz, zn, zgh = z[0], z[1], z[2], z[3]
    one = b_hn.dtype.type(1.0)
    hf = h.reshape(-1)
    pk = prepare_pack(packed, TR, nlive[0], 3 * H, H, w_hh, H)
    zon_h, rec_d = mflags[0], mflags[1]
    old_threads = step_threads(nlive[0], 3 * H, H)
    for t in range(T):
        n = nlive[t]
        m = n * H
        if rec_d:  # (GR1) the products read m ⊙ h_{t−1}
            for j in range(n):
                mr = rdm[perm[j]]
                hj = h[j]
                hmj = hm[j]
                for k in range(H):
                    hmj[k] = mr[k] * hj[k]
            step_gemm(pk, packed, N, TR, n, 3 * H, H, hm, H, w_hh, H, 0.0, work, 3 * H, si, sf)
        else:  # (n, 3H)
            step_gemm(pk, packed, N, TR, n, 3 * H, H, h, H, w_hh, H, 0.0, work, 3 * H, si, sf)
        for j in range(n):
            b = perm[j]
            pos = t if rev == 0 else lengths[b] - 1 - t
            row = gx[pos, b]
            wr = work[j]
            base = j * H
            for k in range(2 * H):
                wr[k] += row[k]
            for k in range(H):  # (G1) (G2), arguments negated for exp
                zr[base + k] = -wr[k]
            for k in range(H):
                zz[base + k] = -wr[H + k]
            for k in range(H):
                zgh[base + k] = wr[2 * H + k] + b_hn[k]
            copy(zn, base, row, 2 * H, H)
        vexp(zr, m)
        vexp(zz, m)
        for q in range(m):
            zr[q] = one / (one + zr[q])
        for q in range(m):
            zz[q] = one / (one + zz[q])
        for q in range(m):  # (G3)
            zn[q] += zr[q] * zgh[q]
        vtanh(zn, m)
        if zon_h:  # (G4), then (GZ1) h_t = d ⊙ h_{t−1} + (1 − d) ⊙ h̃_t
            for j in range(n):
                b = perm[j]
                pos = t if rev == 0 else lengths[b] - 1 - t
                dr = zhm[pos, b]
                hj = h[j]
                base = j * H
                for k in range(H):
                    q = base + k
                    new = (one - zz[q]) * zn[q] + zz[q] * hj[k]
                    hj[k] = dr[k] * hj[k] + (one - dr[k]) * new
        else:
            for q in range(m):  # (G4)
                hf[q] = (one - zz[q]) * zn[q] + zz[q] * hf[q]
        for j in range(n):
            b = perm[j]
            pos = t if rev == 0 else lengths[b] - 1 - t
            row = gx[pos, b]
            base = j * H
            copy(row, 0, zr, base, H)
            copy(row, H, zz, base, H)
            copy(row, 2 * H, zn, base, H)
            copy(ghn[pos, b], 0, zgh, base, H)
            copy(out[pos, b], 0, h[j], 0, H)
    restore_threads(old_threads)


@numba.njit(**JIT)
def gru_backward(
    gates,
    ghn,
    out,
    h0,
    w_hh,
    perm,
    lengths,
    nlive,
    rev,
    packed,
    dout,
    dh,
    dax,
    dah,
    hprev,
    dst,
    z,
    si,
    sf,
    mflags,
    zhm,
    rdm,
    zp,
):
    """The backward time loop: (GB1)–(GB6) of the module docstring.

    gates, ghn, out: saved by :func:`gru_forward`; h0 (B, H) batch order.  dout (T, B, H).
    dh (B, H): in ∂L/∂h_n, out ∂L/∂h_0, kernel order.  dax, dah (T, B, 3H) zeros: gradients of
    the input-side and recurrent-side pre-activations.  hprev (T, B, H) zeros.  dst (B, 3H),
    z (9, B·H): scratch.  mflags, zhm, rdm: the masks, as :func:`gru_forward`; zp (2, B·H):
    scratch for them.
    """
    T = gates.shape[0]
    H = dh.shape[1]
    gr, gz, gn, zgh, zhp, dan, daz, dar, dahn = (
        z[0], z[1], z[2], z[3], z[4], z[5], z[6], z[7], z[8],
    )  # fmt: skip
    one = dh.dtype.type(1.0)
    dhf = dh.reshape(-1)
    pk = prepare_pack(packed, N, nlive[0], H, 3 * H, w_hh, H)
    zon_h, rec_d = mflags[0], mflags[1]
    zhc, zrec = zp[0], zp[1]  # d ⊙ δh_t; δA_h W_hh before the mask
    old_threads = step_threads(nlive[0], 3 * H, H)
    for t in range(T - 1, -1, -1):
        n = nlive[t]
        m = n * H
        for j in range(n):  # gather this step's saved values into contiguous rows
            b = perm[j]
            pos = t if rev == 0 else lengths[b] - 1 - t
            pp = pos - 1 if rev == 0 else pos + 1
            row = gates[pos, b]
            base = j * H
            copy(gr, base, row, 0, H)
            copy(gz, base, row, H, H)
            copy(gn, base, row, 2 * H, H)
            copy(zgh, base, ghn[pos, b], 0, H)
            if t == 0:
                copy(zhp, base, h0[b], 0, H)
            else:
                copy(zhp, base, out[pp, b], 0, H)
            copy(hprev[pos, b], 0, zhp, base, H)
            if rec_d:  # (GRB) H_prev holds the products' operand m ⊙ h_{t−1}
                hp = hprev[pos, b]
                mr = rdm[b]
                for k in range(H):
                    hp[k] = mr[k] * hp[k]
            dhj = dh[j]
            do = dout[pos, b]
            for k in range(H):  # (GB1)
                dhj[k] += do[k]
            if zon_h:  # (GZB) δh̃_t = (1 − d) ⊙ δh_t; d ⊙ δh_t goes to h_{t−1}
                dr = zhm[pos, b]
                for k in range(H):
                    zhc[base + k] = dr[k] * dhj[k]
                    dhj[k] = (one - dr[k]) * dhj[k]
        for q in range(m):  # (GB2)
            dan[q] = dhf[q] * (one - gz[q]) * (one - gn[q] * gn[q])
        for q in range(m):  # (GB3)
            daz[q] = dhf[q] * (zhp[q] - gn[q]) * gz[q] * (one - gz[q])
        for q in range(m):  # (GB4)
            dar[q] = dan[q] * zgh[q] * gr[q] * (one - gr[q])
        for q in range(m):  # (GB5) the recurrent side of n
            dahn[q] = dan[q] * gr[q]
        for q in range(m):  # (GB6), the direct path
            dhf[q] = dhf[q] * gz[q]
        for j in range(n):
            b = perm[j]
            pos = t if rev == 0 else lengths[b] - 1 - t
            base = j * H
            sr = dst[j]
            copy(sr, 0, dar, base, H)
            copy(sr, H, daz, base, H)
            copy(sr, 2 * H, dahn, base, H)
            copy(dah[pos, b], 0, sr, 0, 3 * H)
            ax = dax[pos, b]
            copy(ax, 0, sr, 0, 2 * H)
            copy(ax, 2 * H, dan, base, H)
        if rec_d:  # (GRB) + (δA_h W_hh) ⊙ m
            step_gemm(pk, packed, N, N, n, H, 3 * H, dst, 3 * H, w_hh, H, 0.0, zrec, H, si, sf)
            for j in range(n):
                mr = rdm[perm[j]]
                dhj = dh[j]
                base = j * H
                for k in range(H):
                    dhj[k] += mr[k] * zrec[base + k]
        else:  # (GB6) + δA_h W_hh
            step_gemm(pk, packed, N, N, n, H, 3 * H, dst, 3 * H, w_hh, H, 1.0, dh, H, si, sf)
        if zon_h:  # (GZB) + d ⊙ δh_t
            for q in range(m):
                dhf[q] += zhc[q]
    restore_threads(old_threads)


class GRUKernel:
    """One direction of one GRU layer over a whole sequence, fused: the kernel protocol of
    :mod:`carousel.kernels.common` (which supplies the autograd)."""

    #: saved besides inputs and outputs: the activations r, z, n and W_hn h_{t−1} + b_hn
    n_saved = 2

    @staticmethod
    def forward(call, x, state, weights):
        (h0,) = state
        w = weights
        T, B, _ = x.shape
        H = w.w_hh.shape[1]
        dtype = x.dtype
        order, bf16 = call.order, call.bf16
        x2 = x.reshape(T * B, -1)
        bias = torch.zeros(3 * H, dtype=dtype)
        if w.b_ih is not None:
            bias += w.b_ih
        b_hn = torch.zeros(H, dtype=dtype)
        if w.b_hh is not None:
            bias[: 2 * H] += w.b_hh[: 2 * H]
            b_hn += w.b_hh[2 * H :]
        gx = input_products(x2, w.w_ih, bias, bf16).view(T, B, 3 * H)  # all steps in one product
        h = order.sort(h0)
        out = order.buffer(T, B, H, dtype=dtype)
        ghn = torch.empty(T, B, H, dtype=dtype)
        work = torch.empty(B, 3 * H, dtype=dtype)
        z = torch.empty(4, B * H, dtype=dtype)
        si, sf = scratch(dtype)
        perm, lens, nlive = order.arrays()
        mflags, zhm, rdm = _masks(call.masks, dtype)
        hm = torch.empty(B if mflags[1] else 1, H, dtype=dtype)
        gru_forward(
            np_(gx),
            np_(w.w_hh),
            np_(b_hn),
            perm,
            lens,
            nlive,
            int(call.reverse),
            order.packed(dtype, bf16),
            np_(h),
            np_(out),
            np_(ghn),
            np_(work),
            np_(z),
            si,
            sf,
            mflags,
            zhm,
            rdm,
            np_(hm),
        )
        return out, (order.unsort(h),), (gx, ghn)

    @staticmethod
    def backward(call, x, state, weights, out, final, saved, dout, dfinal, needs):
        (h0,) = state
        w = weights
        gates, ghn = saved
        order = call.order
        T, B, _ = x.shape
        H = w.w_hh.shape[1]
        dtype = x.dtype
        dh = order.sort(dfinal[0])
        dax = order.buffer(T, B, 3 * H, dtype=dtype)
        dah = order.buffer(T, B, 3 * H, dtype=dtype)
        hprev = order.buffer(T, B, H, dtype=dtype)
        dst = torch.empty(B, 3 * H, dtype=dtype)
        z = torch.empty(9, B * H, dtype=dtype)
        si, sf = scratch(dtype)
        perm, lens, nlive = order.arrays()
        mflags, zhm, rdm = _masks(call.masks, dtype)
        zp = torch.empty(2, B * H if mflags.any() else 1, dtype=dtype)
        gru_backward(
            np_(gates),
            np_(ghn),
            np_(out),
            np_(h0),
            np_(w.w_hh),
            perm,
            lens,
            nlive,
            int(call.reverse),
            order.packed(dtype, call.bf16),
            np_(dout),
            np_(dh),
            np_(dax),
            np_(dah),
            np_(hprev),
            np_(dst),
            np_(z),
            si,
            sf,
            mflags,
            zhm,
            rdm,
            np_(zp),
        )
        nx, _, nw = needs
        dax2, dah2 = dax.view(T * B, 3 * H), dah.view(T * B, 3 * H)  # (GB7), all steps at once
        db_ih = dax2.sum(0) if nw.b_ih else None
        db_hh = dah2.sum(0) if nw.b_hh else None
        bf16 = call.bf16
        dx, dw_ih, _, _ = flat_weight_grads(dax, x, hprev, w.w_ih, (nx, nw.w_ih, 0, 0), bf16)
        _, _, dw_hh, _ = flat_weight_grads(dah, x, hprev, w.w_ih, (0, 0, nw.w_hh, 0), bf16)
        return dx, (order.unsort(dh),), LayerWeights(dw_ih, dw_hh, db_ih, db_hh, {})


#: the regularisers the kernel runs (what :func:`carousel.kernels.features` reports)
FEATURES = frozenset({"zoneout_hidden", "recurrent_dropout"})


def _masks(masks, dtype: torch.dtype) -> tuple:
    """(mflags, zhm, rdm) for the kernels: which masks are present (zoneout on h, recurrent
    dropout) and the masks as numpy arrays in ``dtype`` (dummies where absent)."""
    d3 = np.zeros((1, 1, 1), np.float32 if dtype == torch.float32 else np.float64)
    if masks is None:
        return np.zeros(2, np.int64), d3, d3[0]

    def arr(m, dummy):
        return dummy if m is None else m.detach().to(dtype).contiguous().numpy()

    flags = [masks.zoneout_hidden is not None, masks.recurrent is not None]
    return (
        np.asarray(flags, np.int64),
        arr(masks.zoneout_hidden, d3),
        arr(masks.recurrent, d3[0]),
    )


KERNEL = GRUKernel()
