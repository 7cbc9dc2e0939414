"""The Elman RNN cell (reference step).

    h_t = φ(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),    φ ∈ {tanh, sigmoid, relu}

Regularisers (:class:`carousel.cells.CellOptions`): variational recurrent dropout reads
m ⊙ h_{t−1} in the product, zoneout on h mixes h_t = d ⊙ h_{t−1} + (1 − d) ⊙ h̃_t, and
DropConnect masks W_hh.

One weight block (G = 1); parameters are laid out exactly as in ``torch.nn.RNN``.
"""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import Tensor

from carousel.cells.base import ACTIVATIONS, CellOptions, check_choice
from carousel.cells.masks import Masks, zoneout

NONLINEARITIES = ("tanh", "sigmoid", "relu")


def rnn_step(
    gx: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None, phi: str, masks: Masks | None = None
) -> Tensor:
    """h_t = φ(gx + W_hh h_{t-1} + b_hh) with gx = W_ih x_t + b_ih.  All (B, H).

    With this step's ``masks`` (:mod:`carousel.cells.masks`): h̃_t = φ(gx + W_hh (m ⊙ h_{t−1})
    + b_hh) (variational recurrent dropout) and h_t = d ⊙ h_{t−1} + (1 − d) ⊙ h̃_t (zoneout).
    """
    mk = masks or Masks()
    hr = h if mk.recurrent is None else mk.recurrent * h
    return zoneout(mk.zoneout_hidden, h, ACTIVATIONS[phi](gx + F.linear(hr, w_hh, b_hh)))


@dataclasses.dataclass(frozen=True)
class RNNOptions(CellOptions):
    """Options of the Elman RNN: the nonlinearity φ."""

    family = "rnn"
    nonlinearity: str = "tanh"

    def gates(self) -> tuple[str, ...]:
        return ("h",)

    def validate(self) -> None:
        super().validate()
        check_choice("nonlinearity", self.nonlinearity, NONLINEARITIES)

    def step_with_gates(self, gx, state, w_hh, b_hh, peep, masks=None):
        h = rnn_step(gx, state[0], w_hh, b_hh, self.nonlinearity, masks)
        return (h,), {"h": h}  # the one block is the output itself
