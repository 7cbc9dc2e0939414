"""The Elman RNN cell (reference step).

    h_t = φ(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),    φ ∈ {tanh, sigmoid, relu}

One weight block (G = 1); parameters are laid out exactly as in ``torch.nn.RNN``.
"""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import Tensor

from carousel.cells.base import ACTIVATIONS, CellOptions, check_choice

NONLINEARITIES = ("tanh", "sigmoid", "relu")


def rnn_step(gx: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None, phi: str) -> Tensor:
    """h_t = φ(gx + W_hh h_{t-1} + b_hh) with gx = W_ih x_t + b_ih.  All (B, H)."""
    return ACTIVATIONS[phi](gx + F.linear(h, w_hh, b_hh))


@dataclasses.dataclass(frozen=True)
class RNNOptions(CellOptions):
    """Options of the Elman RNN: the nonlinearity φ."""

    family = "rnn"
    nonlinearity: str = "tanh"

    def gates(self) -> tuple[str, ...]:
        return ("h",)

    def validate(self) -> None:
        check_choice("nonlinearity", self.nonlinearity, NONLINEARITIES)

    def step_with_gates(self, gx, state, w_hh, b_hh, peep):
        h = rnn_step(gx, state[0], w_hh, b_hh, self.nonlinearity)
        return (h,), {"h": h}  # the one block is the output itself
