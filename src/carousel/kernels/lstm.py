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

from carousel.cells import LSTMOptions
from carousel.kernels._mkl import JIT, TR, N, gemm, vexp, vtanh
from carousel.kernels.common import Order, flat_weight_grads, np_, scratch

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
def lstm_forward(gx, w_hh, peep, flags, perm, lengths, nlive, rev, h, c, out, cs, work, z, si, sf):
    """The forward time loop.

    gx (T, B, G·H): in, W_ih x + b_ih + b_hh; out, the gates' activations i, f, g, o.
    w_hh (G·H, H); peep (3, H) rows p_i, p_f, p_o (zeros where absent).
    h, c (B, H): initial state in kernel order; on return, each sequence's final state.
    out (T, B, H) zeros: h_t.  cs (T, B, H): s_t.  work (B, G·H), z (5, B·H): scratch.
    """
    has_i, own_f, coupled, has_o, act_in, act_out, oi, of, og, oo, G = (
        flags[0],
        flags[1],
        flags[2],
        flags[3],
        flags[4],
        flags[5],
        flags[6],
        flags[7],
        flags[8],
        flags[9],
        flags[10],
    )
    T = gx.shape[0]
    H = h.shape[1]
    GH = G * H
    oi, of, og, oo = oi * H, of * H, og * H, oo * H
    zi, zf, zg, zo, zs = z[0], z[1], z[2], z[3], z[4]
    pi, pf, po = peep[0], peep[1], peep[2]
    for t in range(T):
        n = nlive[t]
        gemm(N, TR, n, GH, H, 1.0, h, H, w_hh, H, 0.0, work, GH, si, sf)  # (n, G·H)
        for j in range(n):
            b = perm[j]
            pos = t if rev == 0 else lengths[b] - 1 - t
            row = gx[pos, b]
            wr = work[j]
            base = j * H
            for k in range(H):  # (F1) pre-activations; sigmoid arguments negated for exp
                cp = c[j, k]
                if has_i:
                    zi[base + k] = -(row[oi + k] + wr[oi + k] + pi[k] * cp)
                if own_f:
                    zf[base + k] = -(row[of + k] + wr[of + k] + pf[k] * cp)
                ag = row[og + k] + wr[og + k]
                zg[base + k] = -ag if act_in == 1 else ag
        m = n * H
        if has_i:
            vexp(zi, m)
        if own_f:
            vexp(zf, m)
        if act_in == 0:
            vtanh(zg, m)
        elif act_in == 1:
            vexp(zg, m)
        for j in range(n):
            b = perm[j]
            pos = t if rev == 0 else lengths[b] - 1 - t
            row = gx[pos, b]
            wr = work[j]
            base = j * H
            for k in range(H):
                iv = 1.0 / (1.0 + zi[base + k]) if has_i else 1.0  # (F2)
                if own_f:  # (F3)
                    fv = 1.0 / (1.0 + zf[base + k])
                elif coupled:
                    fv = 1.0 - iv
                else:
                    fv = 1.0
                gv = 1.0 / (1.0 + zg[base + k]) if act_in == 1 else zg[base + k]  # (F4)
                s = fv * c[j, k] + iv * gv  # (F5)
                c[j, k] = s
                cs[pos, b, k] = s
                if has_i:
                    row[oi + k] = iv
                if own_f:
                    row[of + k] = fv
                row[og + k] = gv
                if has_o:
                    zo[base + k] = -(row[oo + k] + wr[oo + k] + po[k] * s)
                zs[base + k] = s
        if has_o:
            vexp(zo, m)
        if act_out == 0:
            vtanh(zs, m)
        for j in range(n):
            b = perm[j]
            pos = t if rev == 0 else lengths[b] - 1 - t
            row = gx[pos, b]
            base = j * H
            for k in range(H):
                ov = 1.0 / (1.0 + zo[base + k]) if has_o else 1.0  # (F6)
                hv = ov * zs[base + k]  # (F7)
                if has_o:
                    row[oo + k] = ov
                h[j, k] = hv
                out[pos, b, k] = hv


@numba.njit(**JIT)
def lstm_backward(
    gates, cs, out, h0, c0, w_hh, peep, flags, perm, lengths, nlive, rev,
    dout, dh, dc, dA, hprev, dpeep, dst, z, si, sf,
):  # fmt: skip
    """The backward time loop: the δ recursions of docs/bptt.md.

    gates, cs, out: saved by :func:`lstm_forward`; h0, c0 (B, H) in batch order.
    dout (T, B, H): ∂L/∂h_t from above.  dh, dc (B, H): in, ∂L/∂(h_n, c_n) in kernel order;
    out, ∂L/∂(h_0, c_0) in kernel order.  dA (T, B, G·H) zeros: ∂L/∂a, the gates'
    pre-activations.  hprev (T, B, H) zeros: h_{t−1} of each step.  dpeep (3, H) zeros: the
    peepholes' gradients.  dst (B, G·H), z (1, B·H): scratch.
    """
    has_i, own_f, coupled, has_o, act_in, act_out, oi, of, og, oo, G = (
        flags[0],
        flags[1],
        flags[2],
        flags[3],
        flags[4],
        flags[5],
        flags[6],
        flags[7],
        flags[8],
        flags[9],
        flags[10],
    )
    T = gates.shape[0]
    H = dh.shape[1]
    GH = G * H
    oi, of, og, oo = oi * H, of * H, og * H, oo * H
    zt = z[0]
    pi, pf, po = peep[0], peep[1], peep[2]
    dpi, dpf, dpo = dpeep[0], dpeep[1], dpeep[2]
    for t in range(T - 1, -1, -1):
        n = nlive[t]
        for j in range(n):
            b = perm[j]
            pos = t if rev == 0 else lengths[b] - 1 - t
            base = j * H
            for k in range(H):
                zt[base + k] = cs[pos, b, k]
        if act_out == 0:
            vtanh(zt, n * H)  # φ_out(s_t), recomputed rather than stored
        for j in range(n):
            b = perm[j]
            pos = t if rev == 0 else lengths[b] - 1 - t
            pp = pos - 1 if rev == 0 else pos + 1
            row = gates[pos, b]
            da = dA[pos, b]
            ds_row = dst[j]
            base = j * H
            for k in range(H):
                if t == 0:
                    sp = c0[b, k]
                    hp = h0[b, k]
                else:
                    sp = cs[pp, b, k]
                    hp = out[pp, b, k]
                hprev[pos, b, k] = hp
                s = cs[pos, b, k]
                phi = zt[base + k]
                dhv = dh[j, k] + dout[pos, b, k]  # (B1)
                iv = row[oi + k] if has_i else 1.0
                if own_f:
                    fv = row[of + k]
                elif coupled:
                    fv = 1.0 - iv
                else:
                    fv = 1.0
                gv = row[og + k]
                ov = row[oo + k] if has_o else 1.0
                dao = dhv * phi * ov * (1.0 - ov) if has_o else 0.0  # (B2)
                dphi = dhv * ov * (1.0 - phi * phi) if act_out == 0 else dhv * ov
                ds = dc[j, k] + dphi + dao * po[k]  # (B3)
                dgv = ds * iv  # (B4)
                if act_in == 0:
                    dag = dgv * (1.0 - gv * gv)
                elif act_in == 1:
                    dag = dgv * gv * (1.0 - gv)
                else:
                    dag = dgv
                di = ds * gv  # (B5)
                if coupled:
                    di -= ds * sp
                dai = di * iv * (1.0 - iv) if has_i else 0.0
                daf = ds * sp * fv * (1.0 - fv) if own_f else 0.0  # (B6)
                dc[j, k] = ds * fv + dai * pi[k] + daf * pf[k]  # (B7)
                dpi[k] += dai * sp  # (B8)
                dpf[k] += daf * sp
                dpo[k] += dao * s
                if has_i:
                    da[oi + k] = dai
                    ds_row[oi + k] = dai
                if own_f:
                    da[of + k] = daf
                    ds_row[of + k] = daf
                da[og + k] = dag
                ds_row[og + k] = dag
                if has_o:
                    da[oo + k] = dao
                    ds_row[oo + k] = dao
        gemm(N, N, n, H, GH, 1.0, dst, GH, w_hh, H, 0.0, dh, H, si, sf)  # (B9) (n, H)


class LSTMFunction(torch.autograd.Function):
    """One direction of one LSTM-family layer over a whole sequence, fused."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, p_i, p_f, p_o, flags, lengths, reverse):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        GH = w_hh.shape[0]
        dtype = x.dtype
        order = Order(T, B, lengths)
        x2 = x.reshape(T * B, -1)
        bias = b_ih if b_hh is None else (b_hh if b_ih is None else b_ih + b_hh)
        if bias is None:
            gx = x2.mm(w_ih.t())
        else:
            gx = torch.addmm(bias, x2, w_ih.t())  # (T·B, G·H): all steps in one product
        gx = gx.view(T, B, GH)
        peep = torch.zeros(3, H, dtype=dtype)
        for row, p in enumerate((p_i, p_f, p_o)):
            if p is not None:
                peep[row] = p.detach()
        h = order.sort(h0)
        c = order.sort(c0)
        out = torch.zeros(T, B, H, dtype=dtype)
        cs = torch.empty(T, B, H, dtype=dtype)  # read only at live steps
        work = torch.empty(B, GH, dtype=dtype)
        z = torch.empty(5, B * H, dtype=dtype)
        si, sf = scratch(dtype)
        perm, lens, nlive = order.arrays()
        w_hh_c = w_hh.detach().contiguous()
        lstm_forward(
            np_(gx), np_(w_hh_c), np_(peep), np.asarray(flags, np.int64), perm, lens, nlive,
            int(reverse), np_(h), np_(c), np_(out), np_(cs), np_(work), np_(z), si, sf,
        )  # fmt: skip
        h_n, c_n = order.unsort(h), order.unsort(c)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh_c, gx, cs, out, peep)
        ctx.order, ctx.flags, ctx.reverse = order, flags, reverse
        ctx.has_bias = (b_ih is not None, b_hh is not None)
        ctx.has_peep = tuple(p is not None for p in (p_i, p_f, p_o))
        return out, h_n, c_n

    @staticmethod
    def backward(ctx, dout, dh_n, dc_n):
        x, h0, c0, w_ih, w_hh, gates, cs, out, peep = ctx.saved_tensors
        order = ctx.order
        T, B, _ = x.shape
        GH, H = w_hh.shape
        dtype = x.dtype
        dh = order.sort(dh_n)
        dc = order.sort(dc_n)
        dA = torch.zeros(T, B, GH, dtype=dtype)
        hprev = torch.zeros(T, B, H, dtype=dtype)
        dpeep = torch.zeros(3, H, dtype=dtype)
        dst = torch.empty(B, GH, dtype=dtype)
        z = torch.empty(1, B * H, dtype=dtype)
        si, sf = scratch(dtype)
        perm, lens, nlive = order.arrays()
        lstm_backward(
            np_(gates), np_(cs), np_(out), np_(h0.contiguous()), np_(c0.contiguous()),
            np_(w_hh), np_(peep), np.asarray(ctx.flags, np.int64), perm, lens, nlive,
            int(ctx.reverse), np_(dout.contiguous()), np_(dh), np_(dc), np_(dA), np_(hprev),
            np_(dpeep), np_(dst), np_(z), si, sf,
        )  # fmt: skip
        nd = ctx.needs_input_grad
        dx, dw_ih, dw_hh, db = flat_weight_grads(
            dA, x, hprev, w_ih, (nd[0], nd[3], nd[4], nd[5] or nd[6])
        )
        dh0 = order.unsort(dh) if nd[1] else None
        dc0 = order.unsort(dc) if nd[2] else None
        db_ih = db if ctx.has_bias[0] and nd[5] else None
        db_hh = db.clone() if ctx.has_bias[1] and nd[6] else None  # no shared .grad
        dps = [dpeep[r] if ctx.has_peep[r] and nd[7 + r] else None for r in range(3)]
        return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, *dps, None, None, None


def sequence(cell, x, state, weights, lengths, reverse):
    """The fused LSTM-family backend (the signature of ``reference_sequence``)."""
    h0, c0 = state
    peep = weights.peep
    out, h_n, c_n = LSTMFunction.apply(
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
    )
    return out, (h_n, c_n)
