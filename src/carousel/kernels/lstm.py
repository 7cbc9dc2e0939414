"""Fused forward and hand-derived backward through time for the whole LSTM family.

One compiled kernel per direction of the time loop serves every variant: the switches are
runtime integers, so numba compiles it once per dtype.  The equations and their δ recursions
are in ``docs/bptt.md``; the comments ``(F1)…(F7)`` and ``(B1)…(B10)`` point at its lines.

Structure: the input's share of every gate for all steps is one product (torch, MKL) before
the loop; per step the kernel does one MKL GEMM over the live rows (the recurrent product) and
one fused elementwise pass with vectorised exp/tanh.  The backward kernel produces the gates'
pre-activation gradients dA for all steps; dx, dW_ih, dW_hh and the biases are then one
product each over all steps.

Shapes follow the legend in :mod:`carousel`: T, B, I, H, G.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from torch.autograd.function import once_differentiable

from carousel.cells import LSTMOptions
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

_ACT_IN = {"tanh": 0, "sigmoid": 1, "identity": 2}
_ACT_OUT = {"tanh": 0, "identity": 1}


def lstm_flags(opt: LSTMOptions) -> tuple[int, ...]:
    """(has_i, own_f, coupled, has_o, act_in, act_out, oi, of, og, oo, G) for the kernels;
    o* are the gate blocks' column offsets in units of H (−1 when absent)."""
    gates = opt.gates()
    off = {name: gates.index(name) if name in gates else -1 for name in "ifgo"}
    return (
        int(opt.input_gate),
        int("f" in gates),
        int(opt.coupled),
        int(opt.output_gate),
        _ACT_IN[opt.input_activation],
        _ACT_OUT[opt.output_activation],
        off["i"],
        off["f"],
        off["g"],
        off["o"],
        len(gates),
    )


@numba.njit(**JIT)
def _sigmoid_from_exp(z, m, one):
    """z[:m] = 1 / (1 + z[:m]): σ(a) from z = exp(−a)."""
    for q in range(m):
        z[q] = one / (one + z[q])


@numba.njit(**JIT)
def lstm_forward(
    gx, w_hh, peep, flags, perm, lengths, nlive, rev, packed, h, c, out, cs, work, z, si, sf
):
    """The forward time loop.

    gx (T, B, G·H): in, W_ih x + b_ih + b_hh; out, the gates' activations i, f, g, o.
    w_hh (G·H, H); peep (3, H) rows p_i, p_f, p_o (zeros where absent).  flags: those of
    :func:`lstm_flags`, then ``store`` (0 in inference: gx and cs are left as scratch).
    h, c (B, H): initial state in kernel order; on return, each sequence's final state.
    out (T, B, H) zeros: h_t.  cs (T, B, H): s_t.  work (B, G·H), z (5, B·H): scratch.

    Every inner loop touches few contiguous arrays, in the arrays' dtype, so LLVM
    vectorises it; a gate a variant lacks is a vector of ones, so the state update is one
    expression for every variant.
    """
    has_i, own_f, coupled, has_o = flags[0], flags[1], flags[2], flags[3]
    act_in, act_out, G, store = flags[4], flags[5], flags[10], flags[11]
    T = gx.shape[0]
    H = h.shape[1]
    GH = G * H
    oi, of, og, oo = flags[6] * H, flags[7] * H, flags[8] * H, flags[9] * H
    zi, zf, zg, zo, zs = z[0], z[1], z[2], z[3], z[4]
    pi, pf, po = peep[0], peep[1], peep[2]
    one = peep.dtype.type(1.0)
    hf = h.reshape(-1)
    pk = prepare_pack(packed, TR, nlive[0], GH, H, w_hh, H)
    old_threads = step_threads(nlive[0], GH, H)
    for t in range(T):
        n = nlive[t]
        m = n * H
        step_gemm(pk, packed, N, TR, n, GH, H, h, H, w_hh, H, 0.0, work, GH, si, sf)  # W_hh h_{t−1}
        for j in range(n):  # (F1) a = W_ih x_t + b + W_hh h_{t−1}, and the gates' arguments
            b = perm[j]
            pos = t if rev == 0 else lengths[b] - 1 - t
            row = gx[pos, b]
            wr = work[j]
            for k in range(GH):
                wr[k] += row[k]
            cj = c[j]
            base = j * H
            if has_i:
                for k in range(H):
                    zi[base + k] = -(wr[oi + k] + pi[k] * cj[k])
            if own_f:
                for k in range(H):
                    zf[base + k] = -(wr[of + k] + pf[k] * cj[k])
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
        for j in range(n):  # (F5) s_t = f ⊙ s_{t−1} + i ⊙ g
            cj = c[j]
            base = j * H
            for k in range(H):
                cj[k] = zf[base + k] * cj[k] + zi[base + k] * zg[base + k]
            for k in range(H):
                zs[base + k] = cj[k]
            if has_o:
                wr = work[j]
                for k in range(H):
                    zo[base + k] = -(wr[oo + k] + po[k] * cj[k])
        if has_o:  # (F6) o = σ(a_o + p_o ⊙ s_t)
            vexp(zo, m)
            _sigmoid_from_exp(zo, m, one)
        else:
            zo[:m] = one
        if act_out == 0:
            vtanh(zs, m)
        for q in range(m):  # (F7) h_t = o ⊙ φ_out(s_t)
            hf[q] = zo[q] * zs[q]
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
                copy(cs[pos, b], 0, c[j], 0, H)
            copy(out[pos, b], 0, h[j], 0, H)
    restore_threads(old_threads)


@numba.njit(**JIT)
def lstm_backward(
    gates, cs, out, h0, c0, w_hh, peep, flags, perm, lengths, nlive, rev, packed,
    dout, dh, dc, dA, hprev, dpeep, dst, z, si, sf,
):  # fmt: skip
    """The backward time loop: the δ recursions of docs/bptt.md.

    gates, cs, out: saved by :func:`lstm_forward`; h0, c0 (B, H) in batch order.
    dout (T, B, H): ∂L/∂h_t from above.  dh, dc (B, H): in, ∂L/∂(h_n, c_n) in kernel order;
    out, ∂L/∂(h_0, c_0) in kernel order.  dA (T, B, G·H) zeros: ∂L/∂a, the gates'
    pre-activations.  hprev (T, B, H) zeros: h_{t−1} of each step.  dpeep (3, H) zeros: the
    peepholes' gradients.  dst (B, G·H), z (11, B·H): scratch.
    """
    has_i, own_f, coupled, has_o = flags[0], flags[1], flags[2], flags[3]
    act_in, act_out, G = flags[4], flags[5], flags[10]
    T = gates.shape[0]
    H = dh.shape[1]
    GH = G * H
    oi, of, og, oo = flags[6] * H, flags[7] * H, flags[8] * H, flags[9] * H
    zphi, zsp, gi, gf, gg, go, zds, zdao, zdai, zdaf, zst = (
        z[0], z[1], z[2], z[3], z[4], z[5], z[6], z[7], z[8], z[9], z[10],
    )  # fmt: skip
    pi, pf, po = peep[0], peep[1], peep[2]
    dpi, dpf, dpo = dpeep[0], dpeep[1], dpeep[2]
    one = peep.dtype.type(1.0)
    dhf = dh.reshape(-1)
    dcf = dc.reshape(-1)
    pk = prepare_pack(packed, N, nlive[0], H, GH, w_hh, H)
    old_threads = step_threads(nlive[0], GH, H)
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
                copy(zsp, base, c0[b], 0, H)
                copy(hprev[pos, b], 0, h0[b], 0, H)
            else:
                copy(zsp, base, cs[pp, b], 0, H)
                copy(hprev[pos, b], 0, out[pp, b], 0, H)
            copy(zst, base, cs[pos, b], 0, H)
            if has_i:
                copy(gi, base, row, oi, H)
            if own_f:
                copy(gf, base, row, of, H)
            copy(gg, base, row, og, H)
            if has_o:
                copy(go, base, row, oo, H)
            dhj = dh[j]
            do = dout[pos, b]
            for k in range(H):  # (B1) ∂L/∂h_t: from above and from step t + 1
                dhj[k] += do[k]
        if not has_i:
            gi[:m] = one
        if coupled:
            for q in range(m):
                gf[q] = one - gi[q]
        elif not own_f:
            gf[:m] = one
        if not has_o:
            go[:m] = one
        copy(zphi, 0, zst, 0, m)
        if act_out == 0:
            vtanh(zphi, m)  # φ_out(s_t), recomputed rather than stored
        if has_o:  # (B2) δo = δh ⊙ φ_out(s_t) ⊙ o(1 − o)
            for q in range(m):
                zdao[q] = dhf[q] * zphi[q] * go[q] * (one - go[q])
        else:
            zdao[:m] = 0.0
        if act_out == 0:  # (B3) δs = δs_{t+1}-carry + δh ⊙ o ⊙ φ_out'(s_t) + δo ⊙ p_o
            for q in range(m):
                zds[q] = dcf[q] + dhf[q] * go[q] * (one - zphi[q] * zphi[q])
        else:
            for q in range(m):
                zds[q] = dcf[q] + dhf[q] * go[q]
        for j in range(n):
            base = j * H
            for k in range(H):
                zds[base + k] += zdao[base + k] * po[k]
        if has_i:  # (B5) δi = δs ⊙ g (− δs ⊙ s_{t−1} if f = 1 − i), δa_i = δi ⊙ i(1 − i)
            if coupled:
                for q in range(m):
                    zdai[q] = zds[q] * (gg[q] - zsp[q]) * gi[q] * (one - gi[q])
            else:
                for q in range(m):
                    zdai[q] = zds[q] * gg[q] * gi[q] * (one - gi[q])
        else:
            zdai[:m] = 0.0
        if own_f:  # (B6) δa_f = δs ⊙ s_{t−1} ⊙ f(1 − f)
            for q in range(m):
                zdaf[q] = zds[q] * zsp[q] * gf[q] * (one - gf[q])
        else:
            zdaf[:m] = 0.0
        for j in range(n):  # (B7) δs_{t−1} = δs ⊙ f + δa_i ⊙ p_i + δa_f ⊙ p_f
            base = j * H
            dcj = dc[j]
            for k in range(H):
                q = base + k
                dcj[k] = zds[q] * gf[q] + zdai[q] * pi[k] + zdaf[q] * pf[k]
            for k in range(H):  # (B8) peephole gradients
                dpi[k] += zdai[base + k] * zsp[base + k]
                dpf[k] += zdaf[base + k] * zsp[base + k]
                dpo[k] += zdao[base + k] * zst[base + k]
            sr = dst[j]
            if act_in == 0:  # (B4) δa_g = δs ⊙ i ⊙ φ_in'(a_g)
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
        step_gemm(pk, packed, N, N, n, H, GH, dst, GH, w_hh, H, 0.0, dh, H, si, sf)  # (B9) δh_{t−1}
    restore_threads(old_threads)


class LSTMFunction(torch.autograd.Function):
    """One direction of one LSTM-family layer over a whole sequence, fused."""

    @staticmethod
    @no_autocast
    def forward(
        ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, p_i, p_f, p_o, flags, lengths, reverse, store, bf16
    ):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        GH = w_hh.shape[0]
        dtype = x.dtype
        order = Order(T, B, lengths)
        x2 = x.reshape(T * B, -1)
        bias = b_ih if b_hh is None else (b_hh if b_ih is None else b_ih + b_hh)
        gx = input_products(x2, w_ih, bias, bf16).view(T, B, GH)  # all steps in one product
        peep = torch.zeros(3, H, dtype=dtype)
        for row, p in enumerate((p_i, p_f, p_o)):
            if p is not None:
                peep[row] = p.detach()
        h = order.sort(h0)
        c = order.sort(c0)
        out = order.buffer(T, B, H, dtype=dtype)
        cs = torch.empty(T, B, H, dtype=dtype)  # read only at live steps
        work = torch.empty(B, GH, dtype=dtype)
        z = torch.empty(5, B * H, dtype=dtype)
        si, sf = scratch(dtype)
        perm, lens, nlive = order.arrays()
        w_hh_c = w_hh.detach().contiguous()
        lstm_forward(
            np_(gx),
            np_(w_hh_c),
            np_(peep),
            np.asarray((*flags, int(store)), np.int64),
            perm,
            lens,
            nlive,
            int(reverse),
            order.packed(dtype, bf16),
            np_(h),
            np_(c),
            np_(out),
            np_(cs),
            np_(work),
            np_(z),
            si,
            sf,
        )
        h_n, c_n = order.unsort(h), order.unsort(c)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh_c, gx, cs, out, peep)
        ctx.order, ctx.flags, ctx.reverse, ctx.bf16 = order, flags, reverse, bf16
        ctx.has_bias = (b_ih is not None, b_hh is not None)
        ctx.has_peep = tuple(p is not None for p in (p_i, p_f, p_o))
        return out, h_n, c_n

    @staticmethod
    @once_differentiable
    @no_autocast
    def backward(ctx, dout, dh_n, dc_n):
        x, h0, c0, w_ih, w_hh, gates, cs, out, peep = ctx.saved_tensors
        order = ctx.order
        T, B, _ = x.shape
        GH, H = w_hh.shape
        dtype = x.dtype
        dh = order.sort(dh_n)
        dc = order.sort(dc_n)
        dA = order.buffer(T, B, GH, dtype=dtype)
        hprev = order.buffer(T, B, H, dtype=dtype)
        dpeep = torch.zeros(3, H, dtype=dtype)
        dst = torch.empty(B, GH, dtype=dtype)
        z = torch.empty(11, B * H, dtype=dtype)
        si, sf = scratch(dtype)
        perm, lens, nlive = order.arrays()
        lstm_backward(
            np_(gates),
            np_(cs),
            np_(out),
            np_(h0.contiguous()),
            np_(c0.contiguous()),
            np_(w_hh),
            np_(peep),
            np.asarray(ctx.flags, np.int64),
            perm,
            lens,
            nlive,
            int(ctx.reverse),
            order.packed(dtype, ctx.bf16),
            np_(dout.contiguous()),
            np_(dh),
            np_(dc),
            np_(dA),
            np_(hprev),
            np_(dpeep),
            np_(dst),
            np_(z),
            si,
            sf,
        )
        nd = ctx.needs_input_grad
        dx, dw_ih, dw_hh, db = flat_weight_grads(
            dA, x, hprev, w_ih, (nd[0], nd[3], nd[4], nd[5] or nd[6]), ctx.bf16
        )
        dh0 = order.unsort(dh) if nd[1] else None
        dc0 = order.unsort(dc) if nd[2] else None
        db_ih = db if ctx.has_bias[0] and nd[5] else None
        db_hh = db.clone() if ctx.has_bias[1] and nd[6] else None  # no shared .grad
        dps = [dpeep[r] if ctx.has_peep[r] and nd[7 + r] else None for r in range(3)]
        return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, *dps, None, None, None, None, None


def arguments(cell, x, state, weights, lengths, reverse) -> tuple:
    """The arguments of :class:`LSTMFunction` for one direction of one layer."""
    h0, c0 = state
    peep = weights.peep
    tensors = (x, h0, c0, weights.w_ih, weights.w_hh, weights.b_ih, weights.b_hh, *peep.values())
    store = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    return (
        x,
        h0,
        c0,
        weights.w_ih,
        weights.w_hh,
        weights.b_ih,
        weights.b_hh,
        peep.get("ci"),
        peep.get("cf"),
        peep.get("co"),
        lstm_flags(cell),
        lengths,
        reverse,
        store,
        bf16_wanted(x),
    )


def finish(outputs):
    """(output, final state) from :class:`LSTMFunction`'s outputs."""
    out, h_n, c_n = outputs
    return out, (h_n, c_n)


FUNCTION = LSTMFunction
