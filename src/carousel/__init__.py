"""carousel: recurrent sequence learning, exact and fast on an ordinary CPU.

Elman RNN, the LSTM family (1997 to Greff et al.'s variants) and GRU, with the reference
equations as the truth, behind ``torch.nn``'s interface: bidirectional, stacked, variable
lengths, truncated BPTT.

Dimension legend, used in every docstring and ``# (T, B, 4H)`` comment:

    T   time steps of a sequence
    B   sequences in a batch
    I   input features of a step (``input_size``)
    H   hidden units of one direction (``hidden_size``)
    P   projected units of an LSTM's output and h state (``proj_size``; P = H without one)
    G   gate blocks of a cell (``lstm`` 4: i, f, g, o; ``lstm1997`` 3: i, g, o; GRU 3; RNN 1)
    L   stacked layers (``num_layers``)
    D   directions: 2 if ``bidirectional`` else 1
"""

from carousel.backends import BACKENDS, Backend, register_backend
from carousel.cell_modules import GRUCell, LSTMCell, RecurrentCell, RNNCell, make_cell
from carousel.cells import (
    CELLS,
    FAMILIES,
    LSTM_VARIANTS,
    CellOptions,
    Family,
    GRUOptions,
    LSTMOptions,
    RNNOptions,
    get_cell,
)
from carousel.errors import ArgumentError, ArgumentTypeError
from carousel.layers import GRU, LSTM, RNN, RecurrentLayer, detach_state, make_layer, reset_state

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "CELLS",
    "FAMILIES",
    "GRU",
    "LSTM",
    "LSTM_VARIANTS",
    "RNN",
    "ArgumentError",
    "ArgumentTypeError",
    "Backend",
    "CellOptions",
    "Family",
    "GRUCell",
    "GRUOptions",
    "LSTMCell",
    "LSTMOptions",
    "RNNCell",
    "RNNOptions",
    "RecurrentCell",
    "RecurrentLayer",
    "detach_state",
    "get_cell",
    "make_cell",
    "make_layer",
    "register_backend",
    "reset_state",
]
