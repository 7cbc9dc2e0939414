"""Fused forward and hand-derived backward through time for the whole LSTM family.

One compiled kernel per direction of the time loop serves every variant: the switches are
runtime integers, so numba compiles it once per dtype.  The derivation follows; the code below
carries its tags ``(F1)…(F8)``, ``(B1)…(B9)``, ``(P1)``, ``(P2)``, ``(B10)`` and the
regularisers' ``(R1)``, ``(U1)``, ``(Z1)``, ``(Z2)``, ``(ZB1)…(ZB3)``, ``(UB1)``, ``(UB2)``,
``(RB1)`` and layer norm's ``(L0)…(L2)``, ``(LB1)…(LB3)``
(``docs/bptt.md`` has the parts
every family shares: notation, the products over all steps (B10), lengths, bfloat16).
⊙ is the elementwise product, σ the logistic function, δv = ∂L/∂v, all vectors (B, H) rows.

Forward, at step t (the pre-activations a are split into the blocks a_i, a_f, a_g, a_o the
variant has, stacked i, f, g, o as in `torch.nn.LSTM`):

    (F1)  a   = W_ih x_t + b_ih + W_hh h_{t−1} + b_hh
    (F2)  i   = σ(a_i + p_i ⊙ s_{t−1})                   1 without input gate
    (F3)  f   = σ(a_f + p_f ⊙ s_{t−1})                   1 without forget gate; 1 − i if coupled
    (F4)  g   = φ_in(a_g)                                 tanh, sigmoid or identity
    (F5)  s_t = f ⊙ s_{t−1} + i ⊙ g                      the constant error carousel
    (F6)  o   = σ(a_o + p_o ⊙ s_t)                       1 without output gate
    (F7)  m_t = o ⊙ φ_out(s_t)                            φ_out tanh or identity
    (F8)  h_t = W_hr m_t   with a projection (proj_size P), else h_t = m_t

The projection (Sak et al. 2014, ``torch.nn.LSTM(proj_size=P)``): W_hr is (P, H), so h_t and
the output have P units, the recurrent product of (F1) reads them (W_hh is (G·H, P)) and the
state s_t keeps H; (F8) is a second GEMM per step, (n_t, H) × (H, P).

The peephole weights p_i, p_f, p_o are zero where a variant has none, so one code path serves
every variant; a missing gate is a vector of ones. The forward pass keeps i, f, g, o (in place
of gx), s_t and h_t; φ_out(s_t) is recomputed in the backward pass.

Backward. Walk t = T−1 … 0 carrying two gradients from step t + 1: δh_t^rec = ∂L/∂h_t
through the recurrent product of step t + 1, and δs_t^carry = ∂L/∂s_t through step t + 1's
state update and peepholes (both start at the gradients of the final state, δh_n and δs_n;
torch.nn calls s_n c_n).

    (B1)  δh_t  = ∂L/∂y_t + δh_t^rec
    (P1)  δm_t  = δh_t W_hr          with a projection (one GEMM per step), else δm_t = δh_t
    (B2)  δa_o  = δm_t ⊙ φ_out(s_t) ⊙ o(1 − o)                          0 without output gate
    (B3)  δs_t  = δs_t^carry + δm_t ⊙ o ⊙ φ_out'(s_t) + δa_o ⊙ p_o
    (B4)  δa_g  = δs_t ⊙ i ⊙ φ_in'(a_g)          φ_in' = 1 − g², g(1 − g) or 1, from g itself
    (B5)  δa_i  = δs_t ⊙ g ⊙ i(1 − i)                                     0 without input gate
          coupled (f = 1 − i, so ∂s_t/∂i = g − s_{t−1}):
          δa_i  = δs_t ⊙ (g − s_{t−1}) ⊙ i(1 − i)
    (B6)  δa_f  = δs_t ⊙ s_{t−1} ⊙ f(1 − f)                  0 without a forget gate of its own
    (B7)  δs_{t−1}^carry = δs_t ⊙ f + δa_i ⊙ p_i + δa_f ⊙ p_f
    (B8)  δp_i += Σ_b δa_i ⊙ s_{t−1},   δp_f += Σ_b δa_f ⊙ s_{t−1},   δp_o += Σ_b δa_o ⊙ s_t
    (B9)  δh_{t−1}^rec = δA_t W_hh,      δA_t = (δa_i, δa_f, δa_g, δa_o)   one GEMM per step

φ_out'(s) = 1 − φ_out(s)² for tanh and 1 for identity. After the loop δh_{−1}^rec and
δs_{−1}^carry are δh_0 and δs_0, and (B10) gives the rest. With a projection the walk also
keeps each step's δh_t and m_t = o ⊙ φ_out(s_t) (recomputed), and

    (P2)  δW_hr = Σ_{t,b} δh_tᵀ m_t                 one product over all steps, (P, T·B)(T·B, H)

while H_prev in (B10) holds the projected h_{t−1} (T·B, P).

Regularisers (the masks of :mod:`carousel.cells.masks`, read at each sequence's own position;
every one is absent in the plain cell, and the lines below then reduce to those above).
Forward, with s̃_t and h̃_t what (F5) and (F7)/(F8) give:

    (R1)  a   = W_ih x_t + b + W_hh (m ⊙ h_{t−1})      recurrent dropout, m (B, P) per sequence
    (U1)  s̃_t = f ⊙ s_{t−1} + i ⊙ (u ⊙ g)              update dropout, u per step and unit
          o   = σ(a_o + p_o ⊙ s̃_t),  m_t = o ⊙ φ_out(s̃_t)      (F6), (F7) read s̃_t
    (Z1)  s_t = d^s ⊙ s_{t−1} + (1 − d^s) ⊙ s̃_t        zoneout on the state
    (Z2)  h_t = d^h ⊙ h_{t−1} + (1 − d^h) ⊙ h̃_t        zoneout on h (after the projection)

The forward pass keeps s_t (as before); the backward recomputes s̃_t from the saved gates.
Backward, with δh_t of (B1) and δs_t^carry the gradients of the zoned h_t and s_t:

    (ZB1) δh̃_t = (1 − d^h) ⊙ δh_t  takes the place of δh_t in (P1)–(B3) and (P2), and
          δh_{t−1}^rec gains d^h ⊙ δh_t after (B9)
    (ZB2) s̃_t = f ⊙ s_{t−1} + i ⊙ (u ⊙ g), recomputed; (B2), (B3), (B8) read it for s_t
    (ZB3) (1 − d^s) ⊙ δs_t^carry takes its place in (B3), and δs_{t−1}^carry of (B7)
          gains d^s ⊙ δs_t^carry
    (UB1) u ⊙ g takes the place of g in (B5)
    (UB2) δa_g  = δs_t ⊙ i ⊙ u ⊙ φ_in'(a_g)           in place of (B4)
    (RB1) δh_{t−1}^rec = (δA_t W_hh) ⊙ m             in place of (B9); H_prev in (B10) holds
          m ⊙ h_{t−1}, the product's operand

DropConnect needs no line: the layer hands the kernel W_hh ⊙ M, and autograd takes δW_hh
through the mask.

Layer normalisation (``layer_norm``; Ba et al. 2016 as haste's LayerNormLSTM).  With
LN(v; γ) = γ ⊙ x̂, x̂ = (v − μ(v))/σ(v), σ = √(mean((v − μ)²) + ε) over a row's units:

    (L0)  gx  = γ_ih ⊙ x̂_ih + b_ih + b_hh,   x̂_ih of W_ih x_t      all steps at once, before
    (L1)  a   = gx + γ_hh ⊙ x̂_hh,            x̂_hh of v = W_hh h_{t−1}   in place of (F1)
    (L2)  m_t = o ⊙ φ_out(γ_c ⊙ ŝ_t + β_c),  ŝ_t of s̃_t                in place of (F7)

The forward keeps x̂_ih, x̂_hh, ŝ_t and each row's 1/σ.  The gradient of a normalised row:
δv = (δx̂ − mean(δx̂) − x̂ ⊙ mean(δx̂ ⊙ x̂))/σ with δx̂ = γ ⊙ δ(LN), and δγ = Σ δ(LN) ⊙ x̂.

    (LB1) δs_t  = δs_t^carry + LN-gradient of δy, δy = δm_t ⊙ o ⊙ φ_out'(γ_c ŝ_t + β_c),
                  + δa_o ⊙ p_o          in place of (B3);  δγ_c += Σ_b δy ⊙ ŝ_t,  δβ_c += Σ_b δy
    (LB2) δv_t  = LN-gradient of δA_t through γ_hh, x̂_hh;  δγ_hh += Σ_b δA_t ⊙ x̂_hh;
                  (B9) reads δv_t: δh_{t−1}^rec = δv_t W_hh, and δW_hh = Σ_t δv_tᵀ H_prev
    (LB3) δv_ih = LN-gradient of δA through γ_ih, x̂_ih (all steps at once); δX and δW_ih of
                  (B10) read δv_ih; δγ_ih = Σ δA ⊙ x̂_ih; the biases' gradient stays Σ δA

Why (B3) and (B7) look as they do: s_t reaches the loss through h_t (F7) — directly and through
the output gate's peephole (F6) — and through step t + 1, where it is s_{t−1} of (F2), (F3)
and (F5); that last route is δs_t^carry, which (B7) computes one step earlier in the walk.

Structure: the input's share of every gate for all steps is one product (torch, MKL) before
the loop; per step the kernel does one MKL GEMM over the live rows (the recurrent product) and
one fused elementwise pass with vectorised exp/tanh.  The backward kernel produces the gates'
pre-activation gradients δA for all steps; (B10) — δX, δW_ih, δW_hh and the biases — is then
one product each over all steps.

Shapes follow the legend in :mod:`carousel`: T, B, I, H, G.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from carousel.backends import LayerWeights
from carousel.cells.lstm import LN_EPS
from carousel.kernels._mkl import (
    JIT,
    PLAIN,
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
    lstm_flags,
    matmul,
    np_,
    scratch,
)


@numba.njit(**JIT)
def _sigmoid_from_exp(z, m, one):
    """z[:m] = 1 / (1 + z[:m]): σ(a) from z = exp(−a)."""
    for q in range(m):
        z[q] = one / (one + z[q])


@numba.njit(**JIT)
def lstm_forward(
    gx, w_hh, w_hr, peep, flags, perm, lengths, nlive, rev, packed, h, s, out, ss, work, z, si, sf,
    mflags, zsm, zhm, rdm, udm, hm, lnf, lnp, lns,
):  # fmt: skip
    """The forward time loop.

    gx (T, B, G·H): in, W_ih x + b_ih + b_hh; out, the gates' activations i, f, g, o.
    w_hh (G·H, P); w_hr (P, H), the projection (a dummy without one, P = H);
    peep (3, H) rows p_i, p_f, p_o (zeros where absent).  flags: those of
    :func:`lstm_flags`, then ``store`` (0 in inference: gx and ss are left as scratch).
    h (B, P), s (B, H): initial state in kernel order; on return, each sequence's final state.
    out (T, B, P) zeros: h_t.  ss (T, B, H): s_t.  work (B, G·H), z (5, B·H): scratch.
    mflags (4,): which masks are present — zoneout on s, zoneout on h, recurrent dropout,
    update dropout — and zsm (T, B, H), zhm (T, B, P), rdm (B, P), udm (T, B, H) the masks
    (:mod:`carousel.cells.masks`; dummies where absent), indexed by the sequence's own
    position and batch row; hm (B, P): scratch.
    lnf: layer normalisation (1) or not; lnp (G·H + 2H,): γ_hh, γ_c, β_c; lns (T, B, L) with
    L ≥ G·H + H + 2: keeps x̂_hh, ŝ_t, 1/σ_hh and 1/σ_c of each step for the backward (when
    ``store``).

    Every inner loop touches few contiguous arrays, in the arrays' dtype, so LLVM
    vectorises it; a gate a variant lacks is a vector of ones, so the state update is one
    expression for every variant.
    """
    has_i, own_f, coupled, has_o = flags[0], flags[1], flags[2], flags[3]
    act_in, act_out, G, proj, store = flags[4], flags[5], flags[10], flags[11], flags[12]
    T = gx.shape[0]
    H = s.shape[1]
    P = h.shape[1]
    GH = G * H
    oi, of, og, oo = flags[6] * H, flags[7] * H, flags[8] * H, flags[9] * H
    zi, zf, zg, zo, zs = z[0], z[1], z[2], z[3], z[4]
    pi, pf, po = peep[0], peep[1], peep[2]
    one = peep.dtype.type(1.0)
    hf = h.reshape(-1)
    pk = prepare_pack(packed, TR, nlive[0], GH, P, w_hh, P)
    pkr = prepare_pack(packed if proj else PLAIN, TR, nlive[0], P, H, w_hr, H)
    zon_s, zon_h, rec_d, upd_d = mflags[0], mflags[1], mflags[2], mflags[3]
    eps = 1e-5  # carousel.cells.lstm.LN_EPS
    old_threads = step_threads(nlive[0], GH, P)
    for t in range(T):
        n = nlive[t]
        m = n * H
        if rec_d:  # (R1) the recurrent product reads m ⊙ h_{t−1}, one mask per sequence
            for j in range(n):
                mr = rdm[perm[j]]
                hj = h[j]
                hmj = hm[j]
                for k in range(P):
                    hmj[k] = mr[k] * hj[k]
            step_gemm(pk, packed, N, TR, n, GH, P, hm, P, w_hh, P, 0.0, work, GH, si, sf)
        else:  # W_hh h_{t−1}
            step_gemm(pk, packed, N, TR, n, GH, P, h, P, w_hh, P, 0.0, work, GH, si, sf)
        for j in range(n):  # (F1) a = W_ih x_t + b + W_hh h_{t−1}, and the gates' arguments
            b = perm[j]
            pos = t if rev == 0 else lengths[b] - 1 - t
            row = gx[pos, b]
            wr = work[j]
            if lnf:  # (L1) a = gx + γ_hh ⊙ x̂_hh, x̂_hh = (v − μ)/σ of v = W_hh h_{t−1}
                mu = 0.0
                for k in range(GH):
                    mu += wr[k]
                mu /= GH
                var = 0.0
                for k in range(GH):
                    var += (wr[k] - mu) * (wr[k] - mu)
                r = 1.0 / np.sqrt(var / GH + eps)
                for k in range(GH):
                    wr[k] = (wr[k] - mu) * r
                if store:
                    lr = lns[pos, b]
                    copy(lr, 0, wr, 0, GH)
                    lr[GH + H] = r
                for k in range(GH):
                    wr[k] = row[k] + lnp[k] * wr[k]
            else:
                for k in range(GH):
                    wr[k] += row[k]
            sj = s[j]
            base = j * H
            if has_i:
                for k in range(H):
                    zi[base + k] = -(wr[oi + k] + pi[k] * sj[k])
            if own_f:
                for k in range(H):
                    zf[base + k] = -(wr[of + k] + pf[k] * sj[k])
            if act_in == 1:
                for k in range(H):
                    zg[base + k] = -wr[og + k]
            else:
                for k in range(H):
                    zg[base + k] = wr[og + k]
        if has_i:  # (F2) i = σ(a_i + p_i ⊙ s_{t−1})
            vexp(zi, m)
            _sigmoid_from_exp(zi, m, one)
        else:
            zi[:m] = one
        if own_f:  # (F3) f = σ(a_f + p_f ⊙ s_{t−1}), or 1 − i (CIFG), or 1
            vexp(zf, m)
            _sigmoid_from_exp(zf, m, one)
        elif coupled:
            for q in range(m):
                zf[q] = one - zi[q]
        else:
            zf[:m] = one
        if act_in == 0:  # (F4) g = φ_in(a_g)
            vtanh(zg, m)
        elif act_in == 1:
            vexp(zg, m)
            _sigmoid_from_exp(zg, m, one)
        for j in range(n):  # (F5) s̃_t = f ⊙ s_{t−1} + i ⊙ g  ((U1): i ⊙ (u ⊙ g))
            sj = s[j]
            base = j * H
            b = perm[j]
            pos = t if rev == 0 else lengths[b] - 1 - t
            if upd_d:
                ur = udm[pos, b]
                for k in range(H):
                    zs[base + k] = zf[base + k] * sj[k] + zi[base + k] * (zg[base + k] * ur[k])
            else:
                for k in range(H):
                    zs[base + k] = zf[base + k] * sj[k] + zi[base + k] * zg[base + k]
            if zon_s:  # (Z1) s_t = d^s ⊙ s_{t−1} + (1 − d^s) ⊙ s̃_t
                dr = zsm[pos, b]
                for k in range(H):
                    sj[k] = dr[k] * sj[k] + (one - dr[k]) * zs[base + k]
            else:
                for k in range(H):
                    sj[k] = zs[base + k]
            if has_o:  # the output gate's peephole reads s̃_t
                wr = work[j]
                for k in range(H):
                    zo[base + k] = -(wr[oo + k] + po[k] * zs[base + k])
        if lnf:  # (L2) φ_out reads γ_c ⊙ ŝ_t + β_c, ŝ_t = (s̃_t − μ)/σ
            for j in range(n):
                base = j * H
                mu = 0.0
                for k in range(H):
                    mu += zs[base + k]
                mu /= H
                var = 0.0
                for k in range(H):
                    var += (zs[base + k] - mu) * (zs[base + k] - mu)
                r = 1.0 / np.sqrt(var / H + eps)
                for k in range(H):
                    zs[base + k] = (zs[base + k] - mu) * r
                if store:
                    b = perm[j]
                    pos = t if rev == 0 else lengths[b] - 1 - t
                    lr = lns[pos, b]
                    copy(lr, GH, zs, base, H)
                    lr[GH + H + 1] = r
                for k in range(H):
                    zs[base + k] = lnp[GH + k] * zs[base + k] + lnp[GH + H + k]
        if has_o:  # (F6) o = σ(a_o + p_o ⊙ s_t)
            vexp(zo, m)
            _sigmoid_from_exp(zo, m, one)
        else:
            zo[:m] = one
        if act_out == 0:
            vtanh(zs, m)
        if proj:
            for q in range(m):  # (F7) m_t = o ⊙ φ_out(s̃_t)
                zs[q] = zo[q] * zs[q]
            if zon_h:  # (F8) h̃_t = W_hr m_t, then (Z2)
                step_gemm(pkr, packed, N, TR, n, P, H, zs, H, w_hr, H, 0.0, hm, P, si, sf)
            else:  # (F8) h_t = W_hr m_t
                step_gemm(pkr, packed, N, TR, n, P, H, zs, H, w_hr, H, 0.0, h, P, si, sf)
        elif zon_h:  # (F7) h̃_t = o ⊙ φ_out(s̃_t), then (Z2)
            hmf = hm.reshape(-1)
            for q in range(m):
                hmf[q] = zo[q] * zs[q]
        else:
            for q in range(m):  # (F7) h_t = o ⊙ φ_out(s_t)
                hf[q] = zo[q] * zs[q]
        if zon_h:  # (Z2) h_t = d^h ⊙ h_{t−1} + (1 − d^h) ⊙ h̃_t
            for j in range(n):
                b = perm[j]
                pos = t if rev == 0 else lengths[b] - 1 - t
                dr = zhm[pos, b]
                hj = h[j]
                hmj = hm[j]
                for k in range(P):
                    hj[k] = dr[k] * hj[k] + (one - dr[k]) * hmj[k]
        for j in range(n):  # keep i, f, g, o, s_t and h_t at the sequence's own position
            b = perm[j]
            pos = t if rev == 0 else lengths[b] - 1 - t
            row = gx[pos, b]
            base = j * H
            if store:  # activations for the backward pass; inference skips them
                if has_i:
                    copy(row, oi, zi, base, H)
                if own_f:
                    copy(row, of, zf, base, H)
                copy(row, og, zg, base, H)
                if has_o:
                    copy(row, oo, zo, base, H)
                copy(ss[pos, b], 0, s[j], 0, H)
            copy(out[pos, b], 0, h[j], 0, P)
    restore_threads(old_threads)


@numba.njit(**JIT)
def lstm_backward(
    gates, ss, out, h0, s0, w_hh, w_hr, peep, flags, perm, lengths, nlive, rev, packed,
    dout, dh, ds, dA, hprev, dhs, ms, dpeep, dst, z, si, sf,
    mflags, zsm, zhm, rdm, udm, zm, zp, lnf, lnp, lns, dV, dln, zl, rv,
):  # fmt: skip
    """The backward time loop: the δ recursions (B1)–(B9) of the module docstring.

    gates, ss, out: saved by :func:`lstm_forward`; h0 (B, P), s0 (B, H) in batch order;
    w_hr (P, H) the projection (a dummy without one, P = H).
    dout (T, B, P): ∂L/∂h_t from above.  dh (B, P), ds (B, H): in, ∂L/∂(h_n, s_n) in kernel
    order; out, ∂L/∂(h_0, s_0) in kernel order.  dA (T, B, G·H) zeros: ∂L/∂a, the gates'
    pre-activations.  hprev (T, B, P) zeros: h_{t−1} of each step.  With a projection,
    dhs (T, B, P) and ms (T, B, H) zeros: δh_t and m_t of each step, for δW_hr (P2); dummies
    without.  dpeep (3, H) zeros: the peepholes' gradients.  dst (B, G·H), z (12, B·H):
    scratch.  mflags, zsm, zhm, rdm, udm: the masks, as :func:`lstm_forward`; zm (4, B·H)
    and zp (2, B·P): scratch for them.  lnf, lnp, lns: layer normalisation, as
    :func:`lstm_forward`; dV (T, B, G·H) zeros: δv of v = W_hh h_{t−1}, for δW_hh; dln
    (G·H + 2H,) zeros: δγ_hh, δγ_c, δβ_c; zl (2, B·H), rv (B,): scratch.
    """
    has_i, own_f, coupled, has_o = flags[0], flags[1], flags[2], flags[3]
    act_in, act_out, G, proj = flags[4], flags[5], flags[10], flags[11]
    T = gates.shape[0]
    H = ds.shape[1]
    P = dh.shape[1]
    GH = G * H
    oi, of, og, oo = flags[6] * H, flags[7] * H, flags[8] * H, flags[9] * H
    zphi, zsp, gi, gf, gg, go, zds, zdao, zdai, zdaf, zst, zdm = (
        z[0], z[1], z[2], z[3], z[4], z[5], z[6], z[7], z[8], z[9], z[10], z[11],
    )  # fmt: skip
    pi, pf, po = peep[0], peep[1], peep[2]
    dpi, dpf, dpo = dpeep[0], dpeep[1], dpeep[2]
    one = peep.dtype.type(1.0)
    dhf = dh.reshape(-1)
    dsf = ds.reshape(-1)
    dm = zdm if proj else dhf  # δm_t: through the projection (P1), else δh_t itself
    zon_s, zon_h, rec_d, upd_d = mflags[0], mflags[1], mflags[2], mflags[3]
    zu, zd, zsc, gu = zm[0], zm[1], zm[2], zm[3]  # u, d^s, d^s ⊙ δs_t^carry, u ⊙ g
    _zhd, zhc = zp[0], zp[1]  # d^h, d^h ⊙ δh_t
    if not upd_d:
        gu = gg  # without update dropout u ⊙ g is g
    zn, zdy = zl[0], zl[1]  # ŝ_t, δ(γ_c ⊙ ŝ_t + β_c)
    pk = prepare_pack(packed, N, nlive[0], P, GH, w_hh, P)
    pkr = prepare_pack(packed if proj else PLAIN, N, nlive[0], H, P, w_hr, H)
    old_threads = step_threads(nlive[0], GH, P)
    for t in range(T - 1, -1, -1):
        n = nlive[t]
        m = n * H
        for j in range(n):  # gather this step's saved values into contiguous rows
            b = perm[j]
            pos = t if rev == 0 else lengths[b] - 1 - t
            pp = pos - 1 if rev == 0 else pos + 1
            base = j * H
            row = gates[pos, b]
            if t == 0:
                copy(zsp, base, s0[b], 0, H)
                copy(hprev[pos, b], 0, h0[b], 0, P)
            else:
                copy(zsp, base, ss[pp, b], 0, H)
                copy(hprev[pos, b], 0, out[pp, b], 0, P)
            if rec_d:  # (R1): the product read m ⊙ h_{t−1}, and so does δW_hh
                hp = hprev[pos, b]
                mr = rdm[b]
                for k in range(P):
                    hp[k] = mr[k] * hp[k]
            copy(zst, base, ss[pos, b], 0, H)
            if has_i:
                copy(gi, base, row, oi, H)
            if own_f:
                copy(gf, base, row, of, H)
            copy(gg, base, row, og, H)
            if has_o:
                copy(go, base, row, oo, H)
            if upd_d:
                copy(zu, base, udm[pos, b], 0, H)
            if zon_s:
                copy(zd, base, zsm[pos, b], 0, H)
            if lnf:
                copy(zn, base, lns[pos, b], GH, H)
                rv[j] = lns[pos, b, GH + H + 1]
            dhj = dh[j]
            do = dout[pos, b]
            for k in range(P):  # (B1) ∂L/∂h_t: from above and from step t + 1
                dhj[k] += do[k]
            if zon_h:  # (ZB1) δh̃_t = (1 − d^h) ⊙ δh_t; d^h ⊙ δh_t goes to h_{t−1}
                dr = zhm[pos, b]
                pb = j * P
                for k in range(P):
                    zhc[pb + k] = dr[k] * dhj[k]
                    dhj[k] = (one - dr[k]) * dhj[k]
            if proj:
                copy(dhs[pos, b], 0, dhj, 0, P)
        if proj:  # (P1) δm_t = δh_t W_hr
            step_gemm(pkr, packed, N, N, n, H, P, dh, P, w_hr, H, 0.0, zdm, H, si, sf)
        if not has_i:
            gi[:m] = one
        if coupled:
            for q in range(m):
                gf[q] = one - gi[q]
        elif not own_f:
            gf[:m] = one
        if not has_o:
            go[:m] = one
        if upd_d:  # (UB1) u ⊙ g, the update that entered s̃_t
            for q in range(m):
                gu[q] = gg[q] * zu[q]
        if zon_s:  # (ZB2) s̃_t = f ⊙ s_{t−1} + i ⊙ (u ⊙ g), recomputed (ss holds s_t)
            for q in range(m):
                zst[q] = gf[q] * zsp[q] + gi[q] * gu[q]
        if lnf:  # (L2) φ_out's argument γ_c ⊙ ŝ_t + β_c
            for j in range(n):
                base = j * H
                for k in range(H):
                    zphi[base + k] = lnp[GH + k] * zn[base + k] + lnp[GH + H + k]
        else:
            copy(zphi, 0, zst, 0, m)
        if act_out == 0:
            vtanh(zphi, m)  # φ_out(s_t), recomputed rather than stored
        if proj:  # m_t = o ⊙ φ_out(s_t), recomputed, kept for (P2)
            for j in range(n):
                b = perm[j]
                pos = t if rev == 0 else lengths[b] - 1 - t
                mr = ms[pos, b]
                base = j * H
                for k in range(H):
                    mr[k] = go[base + k] * zphi[base + k]
        if has_o:  # (B2) δo = δm ⊙ φ_out(s_t) ⊙ o(1 − o)
            for q in range(m):
                zdao[q] = dm[q] * zphi[q] * go[q] * (one - go[q])
        else:
            zdao[:m] = 0.0
        if zon_s:  # (ZB3) δs_t^carry splits: (1 − d^s) ⊙ it to s̃_t, d^s ⊙ it to s_{t−1}
            for q in range(m):
                zsc[q] = zd[q] * dsf[q]
                dsf[q] = (one - zd[q]) * dsf[q]
        if lnf:  # (LB1) (B3) through the state's layer norm
            if act_out == 0:
                for q in range(m):
                    zdy[q] = dm[q] * go[q] * (one - zphi[q] * zphi[q])
            else:
                for q in range(m):
                    zdy[q] = dm[q] * go[q]
            for j in range(n):
                base = j * H
                m1 = 0.0
                m2 = 0.0
                for k in range(H):
                    q = base + k
                    m1 += lnp[GH + k] * zdy[q]
                    m2 += lnp[GH + k] * zdy[q] * zn[q]
                m1 /= H
                m2 /= H
                r = rv[j]
                for k in range(H):
                    q = base + k
                    zds[q] = dsf[q] + r * (lnp[GH + k] * zdy[q] - m1 - zn[q] * m2)
                    dln[GH + k] += zdy[q] * zn[q]
                    dln[GH + H + k] += zdy[q]
        elif act_out == 0:  # (B3) δs = δs_{t+1}-carry + δm ⊙ o ⊙ φ_out'(s_t) + δo ⊙ p_o
            for q in range(m):
                zds[q] = dsf[q] + dm[q] * go[q] * (one - zphi[q] * zphi[q])
        else:
            for q in range(m):
                zds[q] = dsf[q] + dm[q] * go[q]
        for j in range(n):
            base = j * H
            for k in range(H):
                zds[base + k] += zdao[base + k] * po[k]
        if has_i:  # (B5) δi = δs ⊙ g (− δs ⊙ s_{t−1} if f = 1 − i), δa_i = δi ⊙ i(1 − i)
            if coupled:
                for q in range(m):
                    zdai[q] = zds[q] * (gu[q] - zsp[q]) * gi[q] * (one - gi[q])
            else:
                for q in range(m):
                    zdai[q] = zds[q] * gu[q] * gi[q] * (one - gi[q])
        else:
            zdai[:m] = 0.0
        if own_f:  # (B6) δa_f = δs ⊙ s_{t−1} ⊙ f(1 − f)
            for q in range(m):
                zdaf[q] = zds[q] * zsp[q] * gf[q] * (one - gf[q])
        else:
            zdaf[:m] = 0.0
        for j in range(n):  # (B7) δs_{t−1} = δs ⊙ f + δa_i ⊙ p_i + δa_f ⊙ p_f
            base = j * H
            dsj = ds[j]
            for k in range(H):
                q = base + k
                dsj[k] = zds[q] * gf[q] + zdai[q] * pi[k] + zdaf[q] * pf[k]
            if zon_s:  # (ZB3) the zoned-out share of δs_t reaches s_{t−1} directly
                for k in range(H):
                    dsj[k] += zsc[base + k]
            for k in range(H):  # (B8) peephole gradients
                dpi[k] += zdai[base + k] * zsp[base + k]
                dpf[k] += zdaf[base + k] * zsp[base + k]
                dpo[k] += zdao[base + k] * zst[base + k]
            sr = dst[j]
            if upd_d:  # (UB2) δa_g = δs ⊙ i ⊙ u ⊙ φ_in'(a_g)
                for k in range(H):
                    q = base + k
                    dgu = zds[q] * gi[q] * zu[q]
                    if act_in == 0:
                        sr[og + k] = dgu * (one - gg[q] * gg[q])
                    elif act_in == 1:
                        sr[og + k] = dgu * gg[q] * (one - gg[q])
                    else:
                        sr[og + k] = dgu
            elif act_in == 0:  # (B4) δa_g = δs ⊙ i ⊙ φ_in'(a_g)
                for k in range(H):
                    q = base + k
                    sr[og + k] = zds[q] * gi[q] * (one - gg[q] * gg[q])
            elif act_in == 1:
                for k in range(H):
                    q = base + k
                    sr[og + k] = zds[q] * gi[q] * gg[q] * (one - gg[q])
            else:
                for k in range(H):
                    q = base + k
                    sr[og + k] = zds[q] * gi[q]
            if has_i:
                copy(sr, oi, zdai, base, H)
            if own_f:
                copy(sr, of, zdaf, base, H)
            if has_o:
                copy(sr, oo, zdao, base, H)
            b = perm[j]
            pos = t if rev == 0 else lengths[b] - 1 - t
            copy(dA[pos, b], 0, sr, 0, GH)
            if lnf:  # (LB2) δv = (γ_hh ⊙ δA − mean(γ_hh ⊙ δA) − x̂_hh mean(γ_hh ⊙ δA ⊙ x̂_hh))/σ
                lr = lns[pos, b]
                m1 = 0.0
                m2 = 0.0
                for k in range(GH):
                    m1 += lnp[k] * sr[k]
                    m2 += lnp[k] * sr[k] * lr[k]
                    dln[k] += sr[k] * lr[k]
                m1 /= GH
                m2 /= GH
                r = lr[GH + H]
                for k in range(GH):
                    sr[k] = r * (lnp[k] * sr[k] - m1 - lr[k] * m2)
                copy(dV[pos, b], 0, sr, 0, GH)
        step_gemm(pk, packed, N, N, n, P, GH, dst, GH, w_hh, P, 0.0, dh, P, si, sf)  # (B9) δh_{t−1}
        if rec_d or zon_h:
            for j in range(n):
                dhj = dh[j]
                if rec_d:  # (RB1) δh_{t−1}^rec = (δA_t W_hh) ⊙ m
                    mr = rdm[perm[j]]
                    for k in range(P):
                        dhj[k] = mr[k] * dhj[k]
                if zon_h:  # (ZB1) + d^h ⊙ δh_t
                    pb = j * P
                    for k in range(P):
                        dhj[k] += zhc[pb + k]
    restore_threads(old_threads)


class LSTMKernel:
    """One direction of one LSTM-family layer over a whole sequence, fused: the kernel
    protocol of :mod:`carousel.kernels.common` (which supplies the autograd)."""

    #: saved for the backward besides inputs and outputs: the gates' activations, s_t, and
    #: layer norm's normalised values and 1/σ (one column of zeros without layer norm)
    n_saved = 3

    @staticmethod
    def forward(call, x, state, weights):
        h0, s0 = state
        w = weights
        T, B, _ = x.shape
        GH, P = w.w_hh.shape
        H = s0.shape[1]
        dtype = x.dtype
        order, bf16 = call.order, call.bf16
        x2 = x.reshape(T * B, -1)
        bias = w.b_ih if w.b_hh is None else (w.b_hh if w.b_ih is None else w.b_ih + w.b_hh)
        lnf = w.ln is not None
        if lnf:  # (L0) gx = γ_ih ⊙ x̂_ih + b_ih + b_hh, x̂_ih the normalised W_ih x_t
            lns = torch.empty(T, B, _ln_width(GH, H), dtype=dtype) if call.store else None
            v = input_products(x2, w.w_ih, None, bf16)  # (T·B, G·H), all steps in one product
            var, mu = torch.var_mean(v, dim=1, correction=0, keepdim=True)
            r = torch.rsqrt(var + LN_EPS)
            xh = v.sub_(mu).mul_(r)
            gx = xh * w.ln["weight_ln_ih"].detach()
            if bias is not None:
                gx += bias.detach()
            gx = gx.view(T, B, GH)
            if lns is not None:
                at = GH + H + 2
                lns[..., at : at + GH] = xh.view(T, B, GH)
                lns[..., at + GH] = r.view(T, B)
            lnp = torch.cat([w.ln[n].detach() for n in _LN_ROWS])
        else:
            gx = input_products(x2, w.w_ih, bias, bf16).view(T, B, GH)  # all steps, one product
            lns, lnp = None, _DUMMY2[dtype][0]
        if lns is None:
            lns = torch.zeros(T, B, 1, dtype=dtype)  # saved: the protocol's (T, B, ·) shape
        h = order.sort(h0)
        s = order.sort(s0)
        out = order.buffer(T, B, P, dtype=dtype)
        ss = torch.empty(T, B, H, dtype=dtype)  # read only at live steps
        work = torch.empty(B, GH, dtype=dtype)
        z = torch.empty(5, B * H, dtype=dtype)
        si, sf = scratch(dtype)
        perm, lens, nlive = order.arrays()
        mflags, zsm, zhm, rdm, udm = _masks(call.masks, dtype)
        hm = torch.empty(B, P, dtype=dtype) if mflags[1] or mflags[2] else _DUMMY2[dtype]
        lstm_forward(
            np_(gx),
            np_(w.w_hh),
            np_(_projection(w.w_hr, dtype)),
            np_(_peepholes(w.peep, H, dtype)),
            np.asarray((*lstm_flags(call.cell), int(call.store)), np.int64),
            perm,
            lens,
            nlive,
            int(call.reverse),
            order.packed(dtype, bf16),
            np_(h),
            np_(s),
            np_(out),
            np_(ss),
            np_(work),
            np_(z),
            si,
            sf,
            mflags,
            zsm,
            zhm,
            rdm,
            udm,
            np_(hm),
            int(lnf),
            np_(lnp),
            np_(lns),
        )
        return out, (order.unsort(h), order.unsort(s)), (gx, ss, lns)

    @staticmethod
    def backward(call, x, state, weights, out, final, saved, dout, dfinal, needs):
        h0, s0 = state
        w = weights
        gates, ss, lns = saved
        lnf = w.ln is not None
        order = call.order
        T, B, _ = x.shape
        GH, P = w.w_hh.shape
        H = s0.shape[1]
        proj = w.w_hr is not None
        dtype = x.dtype
        dh = order.sort(dfinal[0])
        ds = order.sort(dfinal[1])
        dA = order.buffer(T, B, GH, dtype=dtype)
        hprev = order.buffer(T, B, P, dtype=dtype)
        dhs = order.buffer(T, B, P, dtype=dtype) if proj else torch.empty(1, 1, 1, dtype=dtype)
        ms = order.buffer(T, B, H, dtype=dtype) if proj else torch.empty(1, 1, 1, dtype=dtype)
        dpeep = torch.zeros(3, H, dtype=dtype)
        dst = torch.empty(B, GH, dtype=dtype)
        z = torch.empty(12, B * H, dtype=dtype)
        si, sf = scratch(dtype)
        perm, lens, nlive = order.arrays()
        mflags, zsm, zhm, rdm, udm = _masks(call.masks, dtype)
        zm = torch.empty(4, B * H if mflags.any() else 1, dtype=dtype)
        zp = torch.empty(2, B * P if mflags[1] else 1, dtype=dtype)
        if lnf:
            lnp = torch.cat([w.ln[n].detach() for n in _LN_ROWS])
            dV = order.buffer(T, B, GH, dtype=dtype)
            dln = torch.zeros(GH + 2 * H, dtype=dtype)
            zl = torch.empty(2, B * H, dtype=dtype)
            rv = torch.empty(B, dtype=dtype)
        else:
            lnp = dln = rv = _DUMMY2[dtype][0]
            dV = torch.empty(1, 1, 1, dtype=dtype)
            zl = _DUMMY2[dtype]
        lstm_backward(
            np_(gates),
            np_(ss),
            np_(out),
            np_(h0),
            np_(s0),
            np_(w.w_hh),
            np_(_projection(w.w_hr, dtype)),
            np_(_peepholes(w.peep, H, dtype)),
            np.asarray(lstm_flags(call.cell), np.int64),
            perm,
            lens,
            nlive,
            int(call.reverse),
            order.packed(dtype, call.bf16),
            np_(dout),
            np_(dh),
            np_(ds),
            np_(dA),
            np_(hprev),
            np_(dhs),
            np_(ms),
            np_(dpeep),
            np_(dst),
            np_(z),
            si,
            sf,
            mflags,
            zsm,
            zhm,
            rdm,
            udm,
            np_(zm),
            np_(zp),
            int(lnf),
            np_(lnp),
            np_(lns),
            np_(dV),
            np_(dln),
            np_(zl),
            np_(rv),
        )
        nx, _, nw = needs
        dln_grads = None
        if lnf:  # (LB3) the input share's layer norm, over all steps at once
            at = GH + H + 2
            xh = lns[..., at : at + GH].reshape(T * B, GH)
            r = lns[..., at + GH].reshape(T * B, 1)
            dA2 = dA.view(T * B, GH)
            dxh = dA2 * w.ln["weight_ln_ih"].detach()
            dv = dxh - dxh.mean(1, keepdim=True) - xh * (dxh * xh).mean(1, keepdim=True)
            dv.mul_(r)
            dx, dw_ih, _, db = flat_weight_grads(
                dv.view(T, B, GH), x, hprev, w.w_ih, (nx, nw.w_ih, False, False), call.bf16
            )
            db = dA2.sum(0) if nw.b_ih or nw.b_hh else None
            dw_hh = None
            if nw.w_hh:  # (B10) with δv in place of δA: the product's own gradient
                dw_hh = matmul(dV.view(T * B, GH).t(), hprev.view(T * B, P), call.bf16)
            dln_grads = {
                "weight_ln_ih": (dA2 * xh).sum(0),
                "weight_ln_hh": dln[:GH],
                "weight_ln_c": dln[GH : GH + H],
                "bias_ln_c": dln[GH + H :],
            }
        else:
            dx, dw_ih, dw_hh, db = flat_weight_grads(
                dA, x, hprev, w.w_ih, (nx, nw.w_ih, nw.w_hh, nw.b_ih or nw.b_hh), call.bf16
            )
        dpeeps = {name: dpeep[_PEEP_ROW[name]] for name in w.peep}
        dw_hr = None
        if proj and nw.w_hr:  # (P2) δW_hr = Σ_t δh_tᵀ m_t, one product over all steps
            dw_hr = matmul(dhs.view(T * B, P).t(), ms.view(T * B, H), call.bf16)
        grads = LayerWeights(
            dw_ih,
            dw_hh,
            db if nw.b_ih else None,
            (db.clone() if nw.b_ih else db) if nw.b_hh else None,  # no shared .grad
            dpeeps,
            dw_hr,
            dln_grads,
        )
        return dx, (order.unsort(dh), order.unsort(ds)), grads


_PEEP_ROW = {"ci": 0, "cf": 1, "co": 2}

#: the extras the kernel runs (what :func:`carousel.kernels.features` reports)
FEATURES = frozenset(
    {"zoneout_state", "zoneout_hidden", "recurrent_dropout", "update_dropout", "layer_norm"}
)
#: the layer-norm parameters the kernels read, in the order of ``lnp``: γ_hh, γ_c, β_c
_LN_ROWS = ("weight_ln_hh", "weight_ln_c", "bias_ln_c")


def _ln_width(GH: int, H: int) -> int:
    """Columns of the saved layer-norm tensor: x̂_hh, ŝ, 1/σ_hh, 1/σ_c, x̂_ih, 1/σ_ih."""
    return 2 * GH + H + 3


_DUMMY2 = {dt: torch.zeros(1, 1, dtype=dt) for dt in (torch.float32, torch.float64)}
_DUMMY3 = {dt: np.zeros((1, 1, 1), dt) for dt in (np.float32, np.float64)}
_NP = {torch.float32: np.float32, torch.float64: np.float64}


def _masks(masks, dtype: torch.dtype) -> tuple:
    """(mflags, zsm, zhm, rdm, udm) for the kernels: which masks are present and the masks as
    numpy arrays in ``dtype`` (dummies where absent)."""
    d3, d2 = _DUMMY3[_NP[dtype]], _DUMMY3[_NP[dtype]][0]
    if masks is None:
        return np.zeros(4, np.int64), d3, d3, d2, d3

    def arr(m, dummy):
        return dummy if m is None else m.detach().to(dtype).contiguous().numpy()

    flags = [m is not None for m in (masks.zoneout_state, masks.zoneout_hidden)]
    flags += [m is not None for m in (masks.recurrent, masks.update)]
    return (
        np.asarray(flags, np.int64),
        arr(masks.zoneout_state, d3),
        arr(masks.zoneout_hidden, d3),
        arr(masks.recurrent, d2),
        arr(masks.update, d3),
    )


def _projection(w_hr: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """W_hr (P, H) for the kernels, or a dummy (1, 1) without a projection."""
    return torch.zeros(1, 1, dtype=dtype) if w_hr is None else w_hr


def _peepholes(peep: dict, H: int, dtype: torch.dtype) -> torch.Tensor:
    """The (3, H) rows p_i, p_f, p_o the kernels read, zeros where a variant has none."""
    rows = torch.zeros(3, H, dtype=dtype)
    for name, p in peep.items():
        rows[_PEEP_ROW[name]] = p
    return rows


KERNEL = LSTMKernel()
