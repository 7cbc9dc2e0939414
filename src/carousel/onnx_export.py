"""ONNX export: every registered cell onto ONNX's own LSTM, GRU and RNN operators.

Inside ``torch.onnx.export(..., dynamo=True)`` a :class:`carousel.RecurrentLayer` emits one
ONNX recurrent operator per layer (both directions in one node) through
``torch.onnx.ops.symbolic_multi_out``, so the exported graph keeps the sequence length and
the batch dynamic and onnxruntime runs its own fused recurrent kernels.  The mapping:

- ``rnn`` → ``RNN`` (activation Tanh, Relu or Sigmoid);
- ``gru`` → ``GRU`` with ``linear_before_reset=1`` (torch.nn.GRU's candidate), gate blocks
  reordered r, z, n → z, r, h;
- the LSTM family → ``LSTM``, blocks reordered i, f, g, o → i, o, f, c, peepholes
  ``P`` = (p_i, p_o, p_f), activations (σ, φ_in, φ_out) with ``Affine(1, 0)`` for an identity
  (NIAF, NOAF), ``input_forget=1`` for coupled gates (CIFG).  A gate the variant lacks
  (the 1997 cell's forget gate, NIG's input gate, NOG's output gate) is a gate held at 1:
  zero weights, no peephole and a bias of :data:`OPEN_GATE_BIAS`, whose sigmoid is 1 in
  float32.

Outputs come back in torch.nn's layout: (T, B, D·H) and final states (L·D, B, H).  Packed
sequences are not exported; ``lengths=`` becomes ONNX's ``sequence_lens``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from carousel.cells import GRUOptions, LSTMOptions, RNNOptions
from carousel.errors import ArgumentError

if TYPE_CHECKING:
    from carousel.backends import LayerWeights
    from carousel.layers import RecurrentLayer

#: the bias that holds a missing gate open: sigmoid(40) rounds to 1 in float32 (and its
#: distance from 1, 4e-18, is far below float64's resolution near 1 as well)
OPEN_GATE_BIAS = 40.0

#: the opset of the exported recurrent operators (LSTM/GRU/RNN are unchanged since 14)
OPSET = 14

_ACTIVATION = {"tanh": ("Tanh", None), "sigmoid": ("Sigmoid", None), "relu": ("Relu", None)}
_ACTIVATION["identity"] = ("Affine", (1.0, 0.0))


def _blocks(w: Tensor | None, gates: tuple[str, ...], H: int) -> dict[str, Tensor | None]:
    if w is None:
        return dict.fromkeys(gates)
    return {g: w[i * H : (i + 1) * H] for i, g in enumerate(gates)}  # slices fold in ONNX


def _lstm_direction(opt: LSTMOptions, w: LayerWeights, H: int):
    """One direction's W (4H, I), R (4H, H), B (8H,), P (3H,) in ONNX's order i, o, f, c."""
    gates = opt.gates()
    wi, wh = _blocks(w.w_ih, gates, H), _blocks(w.w_hh, gates, H)
    bi, bh = _blocks(w.b_ih, gates, H), _blocks(w.b_hh, gates, H)
    like = w.w_ih
    zeros = like.new_zeros(H)
    Ws, Rs, Bis, Bhs = [], [], [], []
    for onnx_gate, ours in (("i", "i"), ("o", "o"), ("f", "f"), ("c", "g")):
        if ours in gates:
            Ws.append(wi[ours])
            Rs.append(wh[ours])
            Bis.append(bi[ours] if bi[ours] is not None else zeros)
            Bhs.append(bh[ours] if bh[ours] is not None else zeros)
        else:  # absent (held at 1), or coupled (f = 1 − i, ONNX ignores these blocks)
            open_ = onnx_gate == "f" and opt.coupled
            Ws.append(like.new_zeros(H, like.size(1)))
            Rs.append(like.new_zeros(H, H))
            Bis.append(zeros if open_ else like.new_full((H,), OPEN_GATE_BIAS))
            Bhs.append(zeros)
    P = torch.cat([w.peep.get(p, zeros) for p in ("ci", "co", "cf")])
    return torch.cat(Ws), torch.cat(Rs), torch.cat([*Bis, *Bhs]), P


def _reorder(w: Tensor | None, order: tuple[int, ...], H: int, like: Tensor, G: int) -> Tensor:
    if w is None:
        return like.new_zeros(G * H)
    return torch.cat([w[i * H : (i + 1) * H] for i in order])


def _activations(names: list[str], D: int) -> dict:
    acts, alphas, betas = [], [], []
    for name in names:
        op, ab = _ACTIVATION[name]
        acts.append(op)
        if ab is not None:
            alphas.append(ab[0])
            betas.append(ab[1])
    attrs: dict = {"activations": acts * D}
    if alphas:
        attrs["activation_alpha"] = alphas * D
        attrs["activation_beta"] = betas * D
    return attrs


def _layer_inputs(layer: RecurrentLayer, weights: list[LayerWeights]):
    """The ONNX operator name, its weight inputs (each stacked over directions) and its
    attributes for one layer."""
    opt, H, D = layer.cell, layer.hidden_size, len(weights)
    attrs: dict = {"hidden_size": H, "direction": "bidirectional" if D == 2 else "forward"}
    like = weights[0].w_ih
    if isinstance(opt, LSTMOptions):
        parts = [_lstm_direction(opt, w, H) for w in weights]
        W, R, B, P = (torch.stack(p) for p in zip(*parts))
        attrs |= _activations(["sigmoid", opt.input_activation, opt.output_activation], D)
        if opt.coupled:
            attrs["input_forget"] = 1
        return "LSTM", (W, R, B), P, attrs
    if isinstance(opt, GRUOptions):
        order = (1, 0, 2)  # r, z, n -> z, r, h
        W = torch.stack([_reorder(w.w_ih, order, H, like, 3) for w in weights])
        R = torch.stack([_reorder(w.w_hh, order, H, like, 3) for w in weights])
        B = torch.stack(
            [
                torch.cat(
                    [_reorder(w.b_ih, order, H, like, 3), _reorder(w.b_hh, order, H, like, 3)]
                )
                for w in weights
            ]
        )
        attrs["linear_before_reset"] = 1
        return "GRU", (W, R, B), None, attrs
    if isinstance(opt, RNNOptions):
        W = torch.stack([w.w_ih for w in weights])
        R = torch.stack([w.w_hh for w in weights])
        B = torch.stack(
            [
                torch.cat([_reorder(w.b_ih, (0,), H, like, 1), _reorder(w.b_hh, (0,), H, like, 1)])
                for w in weights
            ]
        )
        attrs |= _activations([opt.nonlinearity], D)
        return "RNN", (W, R, B), None, attrs
    raise ArgumentError(f"no ONNX export for cell family {opt.family!r}")


def export_layers(
    layer: RecurrentLayer,
    x: Tensor,
    state: tuple[Tensor, ...],
    lengths: Tensor | None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The stack of ``layer`` over x (T, B, I) as ONNX recurrent operators (during export).

    Returns output (T, B, D·H) and the final states, each (L·D, B, H), as the layer's
    forward pass does."""
    if getattr(layer, "proj_size", 0):  # ONNX's LSTM operator has no projection W_hr
        raise ArgumentError(
            f"ONNX export of an LSTM with a projection (proj_size={layer.proj_size}) is not "
            "supported; export a layer without proj_size"
        )
    changed = [  # what makes eval mode differ from the plain cell, which the operators are
        name
        for name in ("zoneout_state", "zoneout_hidden", "layer_norm")
        if getattr(layer.cell, name, 0)
    ]
    if changed:
        raise ArgumentError(
            f"ONNX export of a cell with {', '.join(changed)} is not supported (in eval mode "
            "zoneout mixes in the previous state by its rate and layer norm normalises, which "
            "ONNX's recurrent operators cannot do); export a cell without them (dropout "
            "and weight_drop are fine: eval mode is the plain cell)"
        )
    T, B = x.shape[0], x.shape[1]
    H, D = layer.hidden_size, layer.num_directions
    seq_lens = None if lengths is None else lengths.to(torch.int32)
    n_states = len(layer.cell.state_names)
    finals: list[list[Tensor]] = [[] for _ in range(n_states)]
    for k in range(layer.num_layers):
        weights = [layer.layer_weights(k * D + d) for d in range(D)]
        op, (W, R, Bias), P, attrs = _layer_inputs(layer, weights)
        init = [s[k * D : (k + 1) * D] for s in state]  # each (D, B, H)
        inputs = [x, W, R, Bias, seq_lens, *init]
        if P is not None:
            inputs.append(P)
        y, *hn = torch.onnx.ops.symbolic_multi_out(
            op,
            inputs,
            attrs,
            dtypes=[x.dtype] * (1 + n_states),
            shapes=[[T, D, B, H]] + [[D, B, H]] * n_states,
            version=OPSET,
        )
        x = y.permute(0, 2, 1, 3).reshape(T, B, D * H)  # (T, D, B, H) -> (T, B, D·H)
        if layer.dropout > 0 and layer.training and k < layer.num_layers - 1:
            x = torch.nn.functional.dropout(x, layer.dropout, training=True)
        for i, h in enumerate(hn):
            finals[i].append(h)
    return x, tuple(torch.cat(parts) for parts in finals)


__all__ = ["OPEN_GATE_BIAS", "OPSET", "export_layers"]
