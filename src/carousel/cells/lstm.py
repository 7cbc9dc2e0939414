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

Regularisers (training mode; the masks come from the layer, :mod:`carousel.cells.masks`) and
layer normalisation change the equations above as follows (s̃_t and h̃_t are what the plain
equations give):

    a   = W_ih x_t + b_ih + W_hh (m ⊙ h_{t−1}) + b_hh      recurrent dropout (Gal & Ghahramani 2016)
    s̃_t = f_t ⊙ s_{t−1} + i_t ⊙ (u_t ⊙ g_t)               update dropout (Semeniuta et al. 2016)
    s_t = d^s_t ⊙ s_{t−1} + (1 − d^s_t) ⊙ s̃_t             zoneout on the state (Krueger et al. 2016)
    h_t = d^h_t ⊙ h_{t−1} + (1 − d^h_t) ⊙ h̃_t             zoneout on h, h̃_t = o_t ⊙ φ_out(s̃_t)

with the output gate's peephole reading s̃_t.  DropConnect replaces W_hh by W_hh ⊙ M for the
whole call.  Layer normalisation (Ba et al. 2016, as haste's LayerNormLSTM):

    a   = LN(W_ih x_t; γ_ih) + b_ih + LN(W_hh h_{t−1}; γ_hh) + b_hh
    m_t = o_t ⊙ φ_out(LN(s_t; γ_c, β_c))

LN(v; γ, β) = γ ⊙ (v − μ)/√(σ² + ε) + β over v's units (all G·H pre-activations together),
ε = 1e-5; the state s_t itself is not normalised.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from carousel.cells.base import ACTIVATIONS, REGULARISERS, CellOptions, check_choice
from carousel.cells.masks import Masks, zoneout
from carousel.errors import ArgumentError

INPUT_ACTIVATIONS = ("tanh", "sigmoid", "identity")
OUTPUT_ACTIVATIONS = ("tanh", "identity")
#: the options that set a gate's initial bias, and the gate block each one sets
GATE_BIASES = {"forget_bias": "f", "input_gate_bias": "i", "output_gate_bias": "o"}
GATE_NAMES = {"i": "an input gate", "f": "a forget gate", "o": "an output gate"}
#: layer normalisation's ε
LN_EPS = 1e-5
#: the layer-norm parameters of one direction of one layer: name -> (units, initial value);
#: "G·H" units are the gate pre-activations, "H" the state
LN_PARAMETERS = {
    "weight_ln_ih": ("G·H", 1.0),
    "weight_ln_hh": ("G·H", 1.0),
    "weight_ln_c": ("H", 1.0),
    "bias_ln_c": ("H", 0.0),
}


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
        zoneout_state: zoneout on the internal state s (Krueger et al. 2016), the rate at
            which a unit keeps s_{t−1}; eval mode uses the expectation.
        update_dropout: dropout on the cell update g (Semeniuta et al. 2016), a fresh
            inverted-dropout mask per step and unit; eval mode is the plain cell.
        layer_norm: layer normalisation of the input's and the recurrent share of the gate
            pre-activations and of the state before φ_out (Ba et al. 2016; haste's
            LayerNormLSTM), with gains (and the state's biases) as parameters.
        zoneout_hidden, recurrent_dropout, weight_drop: see :class:`CellOptions`.
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
    zoneout_state: float = dataclasses.field(default=0.0, kw_only=True)
    update_dropout: float = dataclasses.field(default=0.0, kw_only=True)
    layer_norm: bool = dataclasses.field(default=False, kw_only=True)

    def regularisers(self) -> tuple[str, ...]:
        return ("zoneout_state", *REGULARISERS, "update_dropout")

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
        super().validate()
        for name in (
            "forget_gate",
            "input_gate",
            "output_gate",
            "peepholes",
            "coupled",
            "layer_norm",
        ):
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

    def step(self, gx, state, w_hh, b_hh, peep, w_hr=None, masks=None, ln=None):
        return self.step_with_gates(gx, state, w_hh, b_hh, peep, w_hr, masks, ln)[0]

    def step_with_gates(self, gx, state, w_hh, b_hh, peep, w_hr=None, masks=None, ln=None):
        h, s = state
        if (w_hr is None) != (self.proj_size == 0):
            raise ArgumentError(
                f"proj_size={self.proj_size} needs the projection weight_hr exactly when it "
                f"is positive; got {'none' if w_hr is None else tuple(w_hr.shape)}"
            )
        if bool(ln) != self.layer_norm:
            raise ArgumentError(
                f"layer_norm={self.layer_norm} needs the layer-norm parameters "
                f"{', '.join(LN_PARAMETERS)} exactly when it is True; got "
                f"{', '.join(ln) if ln else 'none'}"
            )
        h, s, gates = lstm_step_with_gates(gx, h, s, w_hh, b_hh, peep, self, w_hr, masks, ln)
        return (h, s), gates

    def input_share(self, x: Tensor, w_ih: Tensor, b_ih: Tensor | None, ln=None) -> Tensor:
        """The input's share of every gate for all steps, W_ih x + b_ih, (T, B, G·H); with
        layer normalisation LN(W_ih x; γ_ih) + b_ih."""
        if not self.layer_norm:
            return F.linear(x, w_ih, b_ih)
        return layer_norm(F.linear(x, w_ih), ln["weight_ln_ih"], b_ih)


def layer_norm(v: Tensor, gain: Tensor, bias: Tensor | None) -> Tensor:
    """LN(v; γ, β) = γ ⊙ (v − μ)/√(σ² + ε) + β over the last dimension (σ² the biased
    variance, ε = :data:`LN_EPS`), as Ba et al. (2016)."""
    return F.layer_norm(v, v.shape[-1:], gain, bias, LN_EPS)


def lstm_step(
    gx: Tensor,
    h: Tensor,
    s: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    peep: dict[str, Tensor],
    opt: LSTMOptions,
    w_hr: Tensor | None = None,
    masks: Masks | None = None,
    ln: dict[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """One step of the LSTM family, written as the equations in the module docstring.

    gx = W_ih x_t + b_ih is (B, G·H) (with layer norm LN(W_ih x_t; γ_ih) + b_ih); h is (B, P)
    with a projection w_hr (P, H), else (B, H); s is (B, H); ``masks`` this step's masks
    (:meth:`Masks.at`), ``ln`` the layer-norm parameters; returns (h_t, s_t).
    """
    h, s, _ = lstm_step_with_gates(gx, h, s, w_hh, b_hh, peep, opt, w_hr, masks, ln)
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
    masks: Masks | None = None,
    ln: dict[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """:func:`lstm_step` and its gate values: (h_t, s_t, {"i", "f", "g", "o": (B, H)}), the
    gates the variant computes (a removed gate, fixed at 1, is left out; CIFG's f = 1 − i is in).
    """
    mk = masks or Masks()
    hr = h if mk.recurrent is None else mk.recurrent * h  # W_hh (m ⊙ h_{t−1}), variational
    if ln is None:
        a = gx + F.linear(hr, w_hh, b_hh)
    else:  # LN(W_ih x; γ_ih) + b_ih (in gx) + LN(W_hh h_{t−1}; γ_hh) + b_hh
        a = gx + layer_norm(F.linear(hr, w_hh), ln["weight_ln_hh"], b_hh)
    a = dict(zip(opt.gates(), a.chunk(opt.num_gates, dim=1)))
    g = ACTIVATIONS[opt.input_activation](a["g"])
    i = torch.sigmoid(a["i"] + peep["ci"] * s if "ci" in peep else a["i"]) if "i" in a else 1.0
    if opt.coupled:
        f = 1 - i
    elif "f" in a:
        f = torch.sigmoid(a["f"] + peep["cf"] * s if "cf" in peep else a["f"])
    else:
        f = 1.0
    update = g if mk.update is None else mk.update * g  # u ⊙ g, update dropout
    s_new = f * s + i * update  # s̃_t
    o = torch.sigmoid(a["o"] + peep["co"] * s_new if "co" in peep else a["o"]) if "o" in a else 1.0
    shown = s_new if ln is None else layer_norm(s_new, ln["weight_ln_c"], ln["bias_ln_c"])
    m = o * ACTIVATIONS[opt.output_activation](shown)
    h_new = m if w_hr is None else F.linear(m, w_hr)  # the projection h̃_t = W_hr m_t
    s_new = zoneout(mk.zoneout_state, s, s_new)  # s_t = d^s ⊙ s_{t−1} + (1 − d^s) ⊙ s̃_t
    h_new = zoneout(mk.zoneout_hidden, h, h_new)  # h_t = d^h ⊙ h_{t−1} + (1 − d^h) ⊙ h̃_t
    gates = {name: v for name, v in (("i", i), ("f", f), ("g", g), ("o", o)) if torch.is_tensor(v)}
    return h_new, s_new, gates
