"""The gated recurrent unit (reference step), with ``torch.nn.GRU``'s equations.

    r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)            reset gate
    z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)            update gate
    n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))  candidate
    h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1}

Three weight blocks stacked r, z, n (G = 3), as in ``torch.nn.GRU``.

Regularisers (:class:`carousel.cells.CellOptions`): variational recurrent dropout reads
m ⊙ h_{t−1} in the three recurrent products (the carry z ⊙ h_{t−1} keeps h_{t−1} itself),
zoneout on h mixes h_t = d ⊙ h_{t−1} + (1 − d) ⊙ h̃_t, and DropConnect masks W_hh.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from carousel.cells.base import CellOptions
from carousel.cells.masks import Masks, zoneout


def gru_step(
    gx: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None, masks: Masks | None = None
) -> Tensor:
    """One GRU step; gx = W_ih x_t + b_ih is (B, 3H), h is (B, H); ``masks`` this step's."""
    return gru_step_with_gates(gx, h, w_hh, b_hh, masks)[0]


def gru_step_with_gates(
    gx: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None, masks: Masks | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`gru_step` and its gate values: (h_t, {"r", "z", "n": (B, H)})."""
    mk = masks or Masks()
    hr = h if mk.recurrent is None else mk.recurrent * h  # W_h· (m ⊙ h_{t−1}), variational
    gx_r, gx_z, gx_n = gx.chunk(3, dim=1)
    gh_r, gh_z, gh_n = F.linear(hr, w_hh, b_hh).chunk(3, dim=1)
    r = torch.sigmoid(gx_r + gh_r)
    z = torch.sigmoid(gx_z + gh_z)
    n = torch.tanh(gx_n + r * gh_n)
    h_new = zoneout(mk.zoneout_hidden, h, (1 - z) * n + z * h)
    return h_new, {"r": r, "z": z, "n": n}


@dataclasses.dataclass(frozen=True)
class GRUOptions(CellOptions):
    """The GRU has no switches of its own; the regularisers are :class:`CellOptions`'."""

    family = "gru"

    def gates(self) -> tuple[str, ...]:
        return ("r", "z", "n")

    def step_with_gates(self, gx, state, w_hh, b_hh, peep, masks=None):
        h, gates = gru_step_with_gates(gx, state[0], w_hh, b_hh, masks)
        return (h,), gates
