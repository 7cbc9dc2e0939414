"""carousel.LSTMCell / GRUCell / RNNCell: torch.nn's cell interface over the reference step.

Standard cells loaded with a torch.nn cell's state_dict give its outputs and every gradient;
every registered variant is one argument away, and stepping a cell T times is the layer."""

from __future__ import annotations

import pytest
import torch

import carousel
from helpers import as_tuple, grads

TORCH_CELLS = {
    "lstm": (torch.nn.LSTMCell, carousel.LSTMCell, {}),
    "gru": (torch.nn.GRUCell, carousel.GRUCell, {}),
    "rnn_tanh": (torch.nn.RNNCell, carousel.RNNCell, {}),
    "rnn_relu": (torch.nn.RNNCell, carousel.RNNCell, {"nonlinearity": "relu"}),
}


@pytest.mark.parametrize("kind", TORCH_CELLS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
def test_parity_with_torch_cells(kind, bias, batched):
    ref_cls, our_cls, extra = TORCH_CELLS[kind]
    ref = ref_cls(3, 5, bias=bias, **extra).double()
    ours = our_cls(3, 5, bias=bias, **extra).double()
    ours.load_state_dict(ref.state_dict())  # strict: identical names and shapes
    assert list(ours.state_dict()) == list(ref.state_dict())
    shape = (4,) if batched else ()
    x = torch.randn(*shape, 3, dtype=torch.float64, requires_grad=True)
    n_states = 2 if kind == "lstm" else 1
    hx = tuple(
        torch.randn(*shape, 5, dtype=torch.float64, requires_grad=True) for _ in range(n_states)
    )
    state = hx if n_states == 2 else hx[0]
    for _ in range(3):  # a few steps, fed back
        out_r, out_o = ref(x, state), ours(x, state)
        for a, b in zip(as_tuple(out_o), as_tuple(out_r)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        state = out_r
    g_r = grads(as_tuple(ref(x, hx if n_states == 2 else hx[0])), [x, *hx, *ref.parameters()])
    g_o = grads(as_tuple(ours(x, hx if n_states == 2 else hx[0])), [x, *hx, *ours.parameters()])
    for a, b in zip(g_o, g_r):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # and back: torch.nn's cell loads carousel's state_dict
    ref.load_state_dict(ours.state_dict())


@pytest.mark.parametrize("kind", TORCH_CELLS)
def test_default_state_is_zeros(kind):
    _, our_cls, extra = TORCH_CELLS[kind]
    cell = our_cls(3, 4, **extra)
    x = torch.randn(2, 3)
    zeros = torch.zeros(2, 4)
    hx = (zeros, zeros) if kind == "lstm" else zeros
    for a, b in zip(as_tuple(cell(x)), as_tuple(cell(x, hx))):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", list(carousel.CELLS))
def test_every_registered_cell_steps_as_its_layer(name):
    """T steps of ``make_cell(name)`` with the layer's weights give the layer's output and
    final state (the layer on the reference path and on the fused kernels)."""
    torch.manual_seed(0)
    T, B, I, H = 4, 3, 2, 5
    layer = carousel.make_layer(name, I, H).double()
    cell = carousel.make_cell(name, I, H).double()
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in layer.state_dict().items()})
    x = torch.randn(T, B, I, dtype=torch.float64)
    n_states = len(layer.cell.state_names)
    state = tuple(torch.randn(B, H, dtype=torch.float64) for _ in range(n_states))
    outs = []
    s = state if n_states == 2 else state[0]
    for t in range(T):
        s = cell(x[t], s)
        outs.append(as_tuple(s)[0])
    hx = tuple(p.unsqueeze(0) for p in state)
    y, h_n = layer(x, hx if n_states == 2 else hx[0])
    torch.testing.assert_close(torch.stack(outs), y, rtol=1e-10, atol=1e-10)
    for a, b in zip(as_tuple(s), as_tuple(h_n)):
        torch.testing.assert_close(a, b.squeeze(0), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(carousel.CELLS))
def test_every_registered_cell_gradcheck(name):
    cell = carousel.make_cell(name, 2, 3, dtype=torch.float64)
    x = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    n_states = len(cell.cell.state_names)
    hx = tuple(torch.randn(2, 3, dtype=torch.float64, requires_grad=True) for _ in range(n_states))

    def step(x, *hx):
        return as_tuple(cell(x, hx if n_states == 2 else hx[0]))

    assert torch.autograd.gradcheck(step, (x, *hx))
    assert torch.autograd.gradgradcheck(step, (x, *hx))


def test_variants_and_switches_one_argument_away():
    peep = carousel.LSTMCell(3, 4, variant="peephole", forget_bias=1.0)
    assert {"weight_ci", "weight_cf", "weight_co"} <= set(dict(peep.named_parameters()))
    assert torch.all(peep.bias_ih[4:8] == 1.0)
    old = carousel.LSTMCell(3, 4, variant="lstm1997")
    assert old.weight_ih.shape == (12, 3)  # i, g, o
    mine = carousel.LSTMCell(3, 4, forget_gate=False, input_activation="sigmoid")
    assert mine.cell == carousel.CELLS["lstm1997"].replace(input_activation="sigmoid")
    assert carousel.RNNCell(3, 4, nonlinearity="relu").nonlinearity == "relu"
    assert "cell=" in repr(old)


def test_unbatched_returns_unbatched():
    cell = carousel.LSTMCell(3, 4)
    h, c = cell(torch.randn(3), (torch.randn(4), torch.randn(4)))
    assert h.shape == c.shape == (4,)
    assert carousel.GRUCell(3, 4)(torch.randn(3)).shape == (4,)


def test_zero_hidden_size_as_torch():
    for cell in (carousel.RNNCell(10, 0, nonlinearity="relu"), carousel.GRUCell(10, 0)):
        assert cell(torch.randn(3, 10), torch.randn(3, 0)).shape == (3, 0)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda c: c(torch.randn(3, 11)), RuntimeError, "inconsistent input_size: got 11 expected"),
        (
            lambda c: c(torch.randn(3, 10), (torch.randn(3, 21), torch.randn(3, 20))),
            RuntimeError,
            "hidden0 has inconsistent hidden_size: got 21, expected 20",
        ),
        (
            lambda c: c(torch.randn(3, 10), (torch.randn(3, 20), torch.randn(5, 20))),
            RuntimeError,
            "Input batch size 3 doesn't match hidden1 batch size 5",
        ),
        (
            lambda c: c(torch.randn(3, 10), (torch.randn(3, 1, 1, 20), torch.randn(3, 20))),
            ValueError,
            r"LSTMCell: Expected hx\[0\] to be 1D or 2D, got 4D instead",
        ),
        (lambda c: c(torch.randn(2, 3, 10)), ValueError, "Expected input to be 1D or 2D"),
        (lambda c: c(torch.randn(3, 10), torch.randn(3, 20)), TypeError, r"a tuple \(h, c\)"),
        (lambda c: c(torch.randn(10), (torch.randn(1, 20),) * 2), ValueError, "rank 1"),
        (lambda c: c(torch.randn(3, 10).double()), ValueError, "dtype torch.float32"),
    ],
)
def test_bad_arguments(call, error, message):
    with pytest.raises(error, match=message) as info:
        call(carousel.LSTMCell(10, 20))
    assert isinstance(info.value, carousel.ArgumentError)


def test_bad_construction():
    with pytest.raises(TypeError, match="input_size should be of type int"):
        carousel.GRUCell(3.0, 4)
    with pytest.raises(ValueError, match="unknown LSTM variant 'gru'"):
        carousel.LSTMCell(3, 4, variant="gru")
    with pytest.raises(ValueError, match="unknown cell 'lstm3000'"):
        carousel.make_cell("lstm3000", 3, 4)
