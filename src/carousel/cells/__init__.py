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
A new family is one :class:`Family` record in :data:`FAMILIES` plus its own files: its options
class with the reference step (``cells/<family>.py``), its layer class, and optionally a fused
kernel module (:class:`carousel.kernels.KernelModule`); no other file changes.
"""

from __future__ import annotations

import dataclasses
import importlib

from carousel.cells.base import CellOptions
from carousel.cells.gru import GRUOptions
from carousel.cells.lstm import LSTMOptions
from carousel.cells.rnn import RNNOptions
from carousel.errors import ArgumentError


@dataclasses.dataclass(frozen=True)
class Family:
    """One cell family: what the layers, the kernels' dispatch, the CLI, the benchmarks and
    the tests read about it.

    ``layer`` and ``kernel`` are import paths, loaded on first use (the layers and kernels
    import this module, so they cannot be imported here).  ``kernel`` is ``None`` for a family
    without a fused kernel: it runs on the reference path and the fused-path tests skip it.
    """

    name: str
    options: type[CellOptions]
    layer: str  # "module:Class" of its torch.nn-style layer (taking ``variant=``)
    kernel: str | None = None  # module implementing carousel.kernels.KernelModule

    def layer_class(self) -> type:
        module, _, name = self.layer.partition(":")
        return getattr(importlib.import_module(module), name)


FAMILIES: dict[str, Family] = {
    "rnn": Family("rnn", RNNOptions, "carousel.layers:RNN", "carousel.kernels.rnn"),
    "gru": Family("gru", GRUOptions, "carousel.layers:GRU", "carousel.kernels.gru"),
    "lstm": Family("lstm", LSTMOptions, "carousel.layers:LSTM", "carousel.kernels.lstm"),
}

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


def family_of(name: str) -> Family:
    """The :class:`Family` record of registered cell ``name``."""
    return FAMILIES[get_cell(name).family]


__all__ = [
    "CELLS",
    "FAMILIES",
    "LSTM_VARIANTS",
    "CellOptions",
    "Family",
    "GRUOptions",
    "LSTMOptions",
    "RNNOptions",
    "family_of",
    "get_cell",
]
