"""The registry and the reference steps, checked against independent forms of the equations."""

from __future__ import annotations

import math

import pytest
import torch

import carousel
from carousel.cells import CELLS, LSTM_VARIANTS, get_cell

# Greff et al.'s table: what each variant changes relative to "vanilla" (our ``peephole``).
GREFF = {
    "peephole": {},
    "nig": {"input_gate": False},
    "nfg": {"forget_gate": False},
    "nog": {"output_gate": False},
    "niaf": {"input_activation": "identity"},
    "noaf": {"output_activation": "identity"},
    "np": {"peepholes": False},
    "cifg": {"coupled": True},
}


def textbook_lstm(x, h, s, blocks, peep, switches):
    """The LSTM step written separately for each gate, as in Greff et al. (2017), eq. (1)-(6),
    with separate weight matrices per gate: blocks[k] = (W_k, R_k, b_k)."""
    act_in = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "identity": lambda a: a}
    act_out = {"tanh": torch.tanh, "identity": lambda a: a}

    def pre(k):
        W, R, b = blocks[k]
        return x @ W.T + h @ R.T + b

    z = act_in[switches.get("input_activation", "tanh")](pre("g"))
    i = torch.sigmoid(pre("i") + peep.get("ci", 0) * s) if "i" in blocks else 1.0
    if switches.get("coupled"):
        f = 1 - i
    elif "f" in blocks:
        f = torch.sigmoid(pre("f") + peep.get("cf", 0) * s)
    else:
        f = 1.0
    c = z * i + s * f
    o = torch.sigmoid(pre("o") + peep.get("co", 0) * c) if "o" in blocks else 1.0
    return act_out[switches.get("output_activation", "tanh")](c) * o, c


def test_registry_lists_every_promised_cell():
    promised = {"rnn", "gru", "lstm", "lstm1997", "peephole"} | set(GREFF)
    assert promised <= set(CELLS)
    assert set(LSTM_VARIANTS) == {n for n, c in CELLS.items() if c.family == "lstm"}


@pytest.mark.parametrize(
    ("name", "gates", "peepholes"),
    [
        ("lstm", "ifgo", ""),
        ("lstm1997", "igo", ""),
        ("peephole", "ifgo", "ci cf co"),
        ("nig", "fgo", "cf co"),
        ("nfg", "igo", "ci co"),
        ("nog", "ifg", "ci cf"),
        ("cifg", "igo", "ci co"),
        ("np", "ifgo", ""),
        ("gru", "rzn", ""),
        ("rnn", "h", ""),
    ],
)
def test_gate_blocks_and_parameter_layout(name, gates, peepholes):
    cell = CELLS[name]
    assert "".join(cell.gates()) == gates
    assert cell.peephole_names() == tuple(peepholes.split())
    layer = carousel.make_layer(name, 3, 5, num_layers=2, bidirectional=True)
    G = len(gates)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    for k in range(2):
        for sfx in ("", "_reverse"):
            layer_in = 3 if k == 0 else 10
            assert shapes.pop(f"weight_ih_l{k}{sfx}") == (G * 5, layer_in)
            assert shapes.pop(f"weight_hh_l{k}{sfx}") == (G * 5, 5)
            assert shapes.pop(f"bias_ih_l{k}{sfx}") == (G * 5,)
            assert shapes.pop(f"bias_hh_l{k}{sfx}") == (G * 5,)
            for p in peepholes.split():
                assert shapes.pop(f"weight_{p}_l{k}{sfx}") == (5,)
    assert shapes == {}


@pytest.mark.parametrize("variant", list(GREFF))
def test_lstm_variants_follow_greffs_equations(variant):
    """Each named variant is vanilla with one change, and its step equals the textbook form."""
    assert CELLS[variant] == get_cell("peephole", **GREFF[variant])
    torch.manual_seed(1)
    B, I, H = 3, 4, 5
    layer = carousel.LSTM(I, H, variant=variant).double()
    w = layer.layer_weights(0)
    gates = layer.cell.gates()
    split = lambda t: dict(zip(gates, t.chunk(len(gates), dim=0)))  # noqa: E731
    W, R, b1, b2 = split(w.w_ih), split(w.w_hh), split(w.b_ih), split(w.b_hh)
    blocks = {k: (W[k], R[k], b1[k] + b2[k]) for k in gates}
    x, h, s = (torch.randn(B, n, dtype=torch.double) for n in (I, H, H))
    expect_h, expect_s = textbook_lstm(x, h, s, blocks, w.peep, GREFF[variant])
    got_h, got_s = layer.cell.step(
        torch.nn.functional.linear(x, w.w_ih, w.b_ih), (h, s), w.w_hh, w.b_hh, w.peep
    )
    torch.testing.assert_close(got_h, expect_h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_s, expect_s, rtol=1e-12, atol=1e-12)


def test_lstm1997_is_the_constant_error_carousel():
    """No forget gate: with the input gate shut, the internal state is carried unchanged."""
    layer = carousel.LSTM(2, 3, variant="lstm1997").double()
    with torch.no_grad():
        layer.bias_ih_l0[:3] = -1e3  # input gate block i: σ(−1000) = 0
    x = torch.randn(50, 2, 2, dtype=torch.double)
    c0 = torch.randn(1, 2, 3, dtype=torch.double)
    _, (_, c_n) = layer(x, (torch.zeros_like(c0), c0))
    torch.testing.assert_close(c_n, c0, rtol=0, atol=0)


def test_lstm_matches_torch_lstm_cell_step():
    cell = torch.nn.LSTMCell(4, 6).double()
    ours = carousel.LSTM(4, 6).double()
    ours.load_state_dict(
        {f"{k.rsplit('_', 1)[0]}_{k.rsplit('_', 1)[1]}_l0": v for k, v in cell.state_dict().items()}
    )
    x, h, c = torch.randn(2, 4).double(), torch.randn(2, 6).double(), torch.randn(2, 6).double()
    w = ours.layer_weights(0)
    got = ours.cell.step(torch.nn.functional.linear(x, w.w_ih, w.b_ih), (h, c), w.w_hh, w.b_hh, {})
    expect = cell(x, (h, c))
    torch.testing.assert_close(got[0], expect[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], expect[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("phi", ["tanh", "sigmoid", "relu"])
def test_elman_rnn_step(phi):
    layer = carousel.RNN(3, 4, nonlinearity=phi).double()
    x, h = torch.randn(2, 3).double(), torch.randn(2, 4).double()
    expect = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu}[phi](
        x @ layer.weight_ih_l0.T + layer.bias_ih_l0 + h @ layer.weight_hh_l0.T + layer.bias_hh_l0
    )
    w = layer.layer_weights(0)
    (got,) = layer.cell.step(
        torch.nn.functional.linear(x, w.w_ih, w.b_ih), (h,), w.w_hh, w.b_hh, {}
    )
    torch.testing.assert_close(got, expect, rtol=1e-12, atol=1e-12)


def test_forget_bias_initialises_the_forget_block_only():
    layer = carousel.LSTM(
        3, 4, num_layers=2, bidirectional=True, variant="peephole", forget_bias=1.0
    )
    for k in range(2):
        for sfx in ("", "_reverse"):
            b_ih = getattr(layer, f"bias_ih_l{k}{sfx}")
            b_hh = getattr(layer, f"bias_hh_l{k}{sfx}")
            assert torch.all(b_ih[4:8] == 1.0) and torch.all(b_hh[4:8] == 0.0)
            assert b_ih[:4].abs().max() <= 0.5 and not torch.all(b_ih[:4] == 1.0)
    # reset_parameters applies it again
    with torch.no_grad():
        layer.bias_ih_l0.zero_()
    layer.reset_parameters()
    assert torch.all(layer.bias_ih_l0[4:8] == 1.0)


def test_gate_biases_initialise_their_blocks_through_the_python_api():
    layer = carousel.LSTM(
        3,
        4,
        num_layers=2,
        bidirectional=True,
        variant="lstm1997",
        input_gate_bias=-2,
        output_gate_bias=-1.5,
    )  # blocks i, g, o
    for k in range(2):
        for sfx in ("", "_reverse"):
            b_ih = getattr(layer, f"bias_ih_l{k}{sfx}")
            b_hh = getattr(layer, f"bias_hh_l{k}{sfx}")
            assert torch.all(b_ih[0:4] == -2.0) and torch.all(b_ih[8:12] == -1.5)
            assert torch.all(b_hh[0:4] == 0.0) and torch.all(b_hh[8:12] == 0.0)
            assert b_ih[4:8].abs().max() <= 0.5 and torch.all(b_ih[4:8] != 0)  # g: torch's init
    both = carousel.LSTM(3, 4, forget_bias=1.0, input_gate_bias=-2.0)  # blocks i, f, g, o
    assert torch.all(both.bias_ih_l0[0:4] == -2.0) and torch.all(both.bias_ih_l0[4:8] == 1.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: carousel.LSTM(3, 4, variant="nig", input_gate_bias=-2.0),
            "input_gate_bias needs an input gate with its own weights; this variant has "
            "blocks f/g/o",
        ),
        (
            lambda: carousel.LSTM(3, 4, variant="nog", output_gate_bias=-2.0),
            "output_gate_bias needs an output gate with its own weights; this variant has "
            "blocks i/f/g",
        ),
        (lambda: carousel.LSTM(3, 4, input_gate_bias=-2.0, bias=False), "needs bias=True"),
        (lambda: carousel.LSTM(3, 4, output_gate_bias="-2"), "output_gate_bias must be a number"),
        (lambda: carousel.LSTM(3, 4, input_gate_bias=math.inf), "input_gate_bias must be a finite"),
        (lambda: get_cell("gru", input_gate_bias=-2.0), "unknown gru option"),
    ],
)
def test_a_gate_bias_without_its_gate_is_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_default_initialisation_is_torch_nn_s():
    layer = carousel.LSTM(3, 16, variant="peephole")
    bound = 1 / 4
    for p in layer.parameters():
        assert p.abs().max() <= bound
        assert p.std() > bound / 4  # not left at zero


@pytest.mark.parametrize(
    ("name", "switches", "message"),
    [
        ("lstm", {"coupled": True, "input_gate": False}, "needs input_gate=True"),
        ("lstm", {"coupled": True, "forget_gate": False}, "needs forget_gate=True"),
        (
            "peephole",
            {"input_gate": False, "forget_gate": False, "output_gate": False},
            "needs at least one gate",
        ),
        ("lstm1997", {"forget_bias": 1.0}, "forget_bias needs a forget gate"),
        ("cifg", {"forget_bias": 1.0}, "forget_bias needs a forget gate"),
        ("lstm", {"input_activation": "relu"}, "input_activation must be one of"),
        ("lstm", {"output_activation": "sigmoid"}, "output_activation must be one of"),
        ("lstm", {"peepholes": "yes"}, "peepholes must be True or False"),
        ("lstm", {"forget_bias": "1"}, "forget_bias must be a number"),
        ("lstm", {"forget_gates": False}, "unknown lstm option"),
        ("rnn", {"nonlinearity": "gelu"}, "nonlinearity must be one of"),
        ("gru", {"peepholes": True}, "unknown gru option"),
        ("lstm2", {}, "unknown cell 'lstm2'"),
    ],
)
def test_nonsense_switches_raise(name, switches, message):
    with pytest.raises(ValueError, match=message):
        get_cell(name, **switches)


def test_switches_change_a_variant():
    layer = carousel.LSTM(3, 4, variant="lstm1997", input_activation="sigmoid", peepholes=True)
    assert layer.cell.input_activation == "sigmoid"
    assert layer.cell.gates() == ("i", "g", "o")
    assert {"weight_ci_l0", "weight_co_l0"} <= set(layer.state_dict())
    assert CELLS["lstm1997"].input_activation == "tanh"  # the registry entry is untouched
