"""The LSTM memory cell and its variants (reference step), one implementation with switches.

In the notation of Hochreiter & Schmidhuber (1997), Gers et al. (2000, 2002) and
Greff et al., "LSTM: A Search Space Odyssey" (2017), with a_* = W_*x x_t + b_* + W_*h h_{t-1}:

    g_t = φ_in(a_g)                              input node
    i_t = σ(a_i + p_i ⊙ s_{t-1})                 input gate        (1 if input_gate=False)
    f_t = σ(a_f + p_f ⊙ s_{t-1})                 forget gate       (1 if forget_gate=False;
                                                                    1 − i_t if coupled)
    s_t = f_t ⊙ s_{t-1} + i_t ⊙ g_t              internal state: the constant error carousel
    o_t = σ(a_o + p_o ⊙ s_t)                     output gate       (1 if output_gate=False)
    m_t = o_t ⊙ φ_out(s_t)
    h_t = m_t, or W_hr m_t with proj_size > 0     output            (projection: Sak et al. 2014)

The peephole terms p_* ⊙ s appear only with ``peepholes=True`` and only for gates that exist;
without a forget gate s_t = s_{t-1} + i_t ⊙ g_t, the carousel with fixed self-weight 1.

Weight blocks are stacked in the order i, f, g, o, leaving out the gates a variant lacks, so the
default ``lstm`` has exactly ``torch.nn.LSTM``'s layout and ``lstm1997`` has i, g, o (G = 3).
The state is (h, c) as in torch.nn; ``c`` is the internal state s above.  With a projection
(``proj_size`` P > 0, as ``torch.nn.LSTM(proj_size=P)``) h_t has P units: W_hr is (P, H), the
recurrent weights read h_{t−1} (G·H, P), and c keeps H units.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from carousel.cells.base import ACTIVATIONS, CellOptions, check_choice
from carousel.errors import ArgumentError

INPUT_ACTIVATIONS = ("tanh", "sigmoid", "identity")
OUTPUT_ACTIVATIONS = ("tanh", "identity")
#: the options that set a gate's initial bias, and the gate block each one sets
GATE_BIASES = {"forget_bias": "f", "input_gate_bias": "i", "output_gate_bias": "o"}
GATE_NAMES = {"i": "an input gate", "f": "a forget gate", "o": "an output gate"}


@dataclasses.dataclass(frozen=True)
class LSTMOptions(CellOptions):
    """The switches of the LSTM family; the defaults give ``torch.nn.LSTM``'s cell.

    Attributes:
        forget_gate: the Gers et al. forget gate; ``False`` gives the 1997 carousel.
        input_gate, output_gate: remove one to get Greff's NIG / NOG.
        peepholes: diagonal weights from the state to the gates (i, f see s_{t-1}; o sees s_t).
        coupled: f = 1 − i (CIFG); needs the input gate, and the forget block is then absent.
        input_activation: φ_in of the input node g: tanh, sigmoid (1997), identity (NIAF).
        output_activation: φ_out: tanh, or identity (NOAF).
        forget_bias: initial value of the forget gate's bias (``bias_ih``'s f block; the
            ``bias_hh`` f block starts at 0); ``None`` keeps torch's uniform initialisation.
        proj_size: P, the units of the projected output h_t = W_hr m_t (0: no projection);
            a layer needs 0 < P < hidden_size.
        input_gate_bias, output_gate_bias: the same for the input and output gates (the
            1997 paper's remedy for internal state drift starts them negative, e.g. −2).
    """

    family = "lstm"
    state_names = ("h", "c")

    forget_gate: bool = True
    input_gate: bool = True
    output_gate: bool = True
    peepholes: bool = False
    coupled: bool = False
    input_activation: str = "tanh"
    output_activation: str = "tanh"
    forget_bias: float | None = None
    proj_size: int = 0
    input_gate_bias: float | None = None
    output_gate_bias: float | None = None

    def gates(self) -> tuple[str, ...]:
        blocks = []
        if self.input_gate:
            blocks.append("i")
        if self.forget_gate and not self.coupled:
            blocks.append("f")
        blocks.append("g")
        if self.output_gate:
            blocks.append("o")
        return tuple(blocks)

    def peephole_names(self) -> tuple[str, ...]:
        if not self.peepholes:
            return ()
        # a peephole exists for each gate that exists and is computed, not derived (CIFG's f)
        return tuple("c" + gate for gate in self.gates() if gate != "g")

    def validate(self) -> None:
        for name in ("forget_gate", "input_gate", "output_gate", "peepholes", "coupled"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ArgumentError(f"{name} must be True or False; got {value!r}")
        if (
            not isinstance(self.proj_size, int)
            or isinstance(self.proj_size, bool)
            or self.proj_size < 0
        ):
            raise ArgumentError(
                "proj_size should be a positive integer or zero to disable projections; "
                f"got {self.proj_size!r}"
            )
        check_choice("input_activation", self.input_activation, INPUT_ACTIVATIONS)
        check_choice("output_activation", self.output_activation, OUTPUT_ACTIVATIONS)
        if self.coupled and not self.input_gate:
            raise ArgumentError(
                "coupled=True (f = 1 − i) needs input_gate=True; got input_gate=False"
            )
        if self.coupled and not self.forget_gate:
            raise ArgumentError(
                "coupled=True makes the forget gate 1 − i, so it needs forget_gate=True; "
                "got forget_gate=False"
            )
        if self.peepholes and not self.peephole_names():
            raise ArgumentError("peepholes=True needs at least one gate; this variant has none")
        for name, gate in GATE_BIASES.items():
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ArgumentError(f"{name} must be a number or None; got {value!r}")
            if not math.isfinite(value):
                raise ArgumentError(f"{name} must be a finite number; got {value}")
            if gate not in self.gates():
                raise ArgumentError(
                    f"{name} needs {GATE_NAMES[gate]} with its own weights; this variant has "
                    f"blocks {'/'.join(self.gates())}"
                )

    def needs_bias(self) -> bool:
        return any(getattr(self, name) is not None for name in GATE_BIASES)

    def init_bias(self, bias_ih: Tensor, bias_hh: Tensor, hidden_size: int) -> None:
        for name, gate in GATE_BIASES.items():
            value = getattr(self, name)
            if value is None:
                continue
            k = self.gates().index(gate)
            block = slice(k * hidden_size, (k + 1) * hidden_size)
            bias_ih[block] = float(value)
            bias_hh[block] = 0.0

    def step(self, gx, state, w_hh, b_hh, peep, w_hr=None):
        return self.step_with_gates(gx, state, w_hh, b_hh, peep, w_hr)[0]

    def step_with_gates(self, gx, state, w_hh, b_hh, peep, w_hr=None):
        h, s = state
        if (w_hr is None) != (self.proj_size == 0):
            raise ArgumentError(
                f"proj_size={self.proj_size} needs the projection weight_hr exactly when it "
                f"is positive; got {'none' if w_hr is None else tuple(w_hr.shape)}"
            )
        h, s, gates = lstm_step_with_gates(gx, h, s, w_hh, b_hh, peep, self, w_hr)
        return (h, s), gates


def lstm_step(
    gx: Tensor,
    h: Tensor,
    s: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    peep: dict[str, Tensor],
    opt: LSTMOptions,
    w_hr: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One step of the LSTM family, written as the equations in the module docstring.

    gx = W_ih x_t + b_ih is (B, G·H); h is (B, P) with a projection w_hr (P, H), else (B, H);
    s is (B, H); returns (h_t, s_t).
    """
    h, s, _ = lstm_step_with_gates(gx, h, s, w_hh, b_hh, peep, opt, w_hr)
    return h, s


def lstm_step_with_gates(
    gx: Tensor,
    h: Tensor,
    s: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    peep: dict[str, Tensor],
    opt: LSTMOptions,
    w_hr: Tensor | None = None,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """:func:`lstm_step` and its gate values: (h_t, s_t, {"i", "f", "g", "o": (B, H)}), the
    gates the variant computes (a removed gate, fixed at 1, is left out; CIFG's f = 1 − i is in).
    """
    a = dict(zip(opt.gates(), (gx + F.linear(h, w_hh, b_hh)).chunk(opt.num_gates, dim=1)))
    g = ACTIVATIONS[opt.input_activation](a["g"])
    i = torch.sigmoid(a["i"] + peep["ci"] * s if "ci" in peep else a["i"]) if "i" in a else 1.0
    if opt.coupled:
        f = 1 - i
    elif "f" in a:
        f = torch.sigmoid(a["f"] + peep["cf"] * s if "cf" in peep else a["f"])
    else:
        f = 1.0
    s = f * s + i * g
    o = torch.sigmoid(a["o"] + peep["co"] * s if "co" in peep else a["o"]) if "o" in a else 1.0
    m = o * ACTIVATIONS[opt.output_activation](s)
    h = m if w_hr is None else F.linear(m, w_hr)  # the projection h_t = W_hr m_t
    gates = {name: v for name, v in (("i", i), ("f", f), ("g", g), ("o", o)) if torch.is_tensor(v)}
    return h, s, gates
