"""The one registry of cells: every name a user, a test, the CLI or a benchmark can ask for.

Each entry maps a name to a family's frozen options (:class:`RNNOptions`,
:class:`LSTMOptions`, :class:`GRUOptions`).  The LSTM variants follow Greff et al. (2017),
whose "vanilla" LSTM is our ``peephole``; each of their variants removes or changes one thing:

========== ======================================================================
name       cell
========== ======================================================================
rnn        Elman RNN, h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
gru        torch.nn.GRU's equations
lstm       torch.nn.LSTM's equations (forget gate, no peepholes): the default
lstm1997   Hochreiter & Schmidhuber (1997): no forget gate, s_t = s_{t-1} + i ⊙ g
peephole   forget gate + peepholes (Gers et al. 2002; Greff's vanilla, "V")
nig        vanilla without input gate
nfg        vanilla without forget gate
nog        vanilla without output gate
niaf       vanilla without input activation (g = a_g)
noaf       vanilla without output activation (h = o ⊙ s)
np         vanilla without peepholes (the same cell as ``lstm``)
cifg       vanilla with coupled input and forget gate, f = 1 − i
========== ======================================================================

A new variant is one line here (plus, if it needs new math, a switch in its family's file).
"""

from __future__ import annotations

from carousel.cells.base import CellOptions
from carousel.cells.gru import GRUOptions
from carousel.cells.lstm import LSTMOptions
from carousel.cells.rnn import RNNOptions
from carousel.errors import ArgumentError

_VANILLA = LSTMOptions(peepholes=True)

CELLS: dict[str, CellOptions] = {
    "rnn": RNNOptions(),
    "gru": GRUOptions(),
    "lstm": LSTMOptions(),
    "lstm1997": LSTMOptions(forget_gate=False),
    "peephole": _VANILLA,
    "nig": LSTMOptions(peepholes=True, input_gate=False),
    "nfg": LSTMOptions(peepholes=True, forget_gate=False),
    "nog": LSTMOptions(peepholes=True, output_gate=False),
    "niaf": LSTMOptions(peepholes=True, input_activation="identity"),
    "noaf": LSTMOptions(peepholes=True, output_activation="identity"),
    "np": LSTMOptions(),
    "cifg": LSTMOptions(peepholes=True, coupled=True),
}

#: the names of the LSTM family's variants, in registry order
LSTM_VARIANTS = tuple(name for name, opt in CELLS.items() if opt.family == "lstm")


def get_cell(name: str, **options: object) -> CellOptions:
    """The registered cell ``name``, with ``options`` (its family's switches) changed.

    Raises ``ValueError`` for an unknown name or option, or a combination that makes no sense.
    """
    if name not in CELLS:
        raise ArgumentError(f"unknown cell {name!r}; known: {', '.join(CELLS)}")
    return CELLS[name].replace(**options)


__all__ = [
    "CELLS",
    "LSTM_VARIANTS",
    "CellOptions",
    "GRUOptions",
    "LSTMOptions",
    "RNNOptions",
    "get_cell",
]
