"""The gated recurrent unit (reference step), with ``torch.nn.GRU``'s equations.

    r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)            reset gate
    z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)            update gate
    n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))  candidate
    h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1}

Three weight blocks stacked r, z, n (G = 3), as in ``torch.nn.GRU``.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from carousel.cells.base import CellOptions


def gru_step(gx: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    """One GRU step; gx = W_ih x_t + b_ih is (B, 3H), h is (B, H)."""
    return gru_step_with_gates(gx, h, w_hh, b_hh)[0]


def gru_step_with_gates(
    gx: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None
) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`gru_step` and its gate values: (h_t, {"r", "z", "n": (B, H)})."""
    gx_r, gx_z, gx_n = gx.chunk(3, dim=1)
    gh_r, gh_z, gh_n = F.linear(h, w_hh, b_hh).chunk(3, dim=1)
    r = torch.sigmoid(gx_r + gh_r)
    z = torch.sigmoid(gx_z + gh_z)
    n = torch.tanh(gx_n + r * gh_n)
    return (1 - z) * n + z * h, {"r": r, "z": z, "n": n}


@dataclasses.dataclass(frozen=True)
class GRUOptions(CellOptions):
    """The GRU has no switches."""

    family = "gru"

    def gates(self) -> tuple[str, ...]:
        return ("r", "z", "n")

    def step_with_gates(self, gx, state, w_hh, b_hh, peep):
        h, gates = gru_step_with_gates(gx, state[0], w_hh, b_hh)
        return (h,), gates
