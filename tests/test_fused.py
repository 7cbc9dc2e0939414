"""The fused CPU kernels against the reference twin: outputs, final states, every gradient.

Every registered cell × {uni, bi} × {1, 2 layers} × {equal, ragged lengths} × {with, without
initial state}, in float64 (to 1e-10) and float32 (to 1e-5), on small shapes; gradcheck in
float64 on the fused path; and the fallback to the reference path when the kernels cannot
load.
"""

from __future__ import annotations

import pytest
import torch

import carousel
from carousel import kernels
from carousel.backends import BACKENDS, select_backend
from helpers import FUSED_CELLS

T, B, IN, H = 5, 4, 3, 4
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-12}, torch.float32: {"rtol": 1e-5, "atol": 2e-6}}


def _pair(name, dtype, **kw):
    torch.manual_seed(1)
    ref = carousel.make_layer(name, IN, H, backend="reference", dtype=dtype, **kw)
    fused = carousel.make_layer(name, IN, H, backend="fused", dtype=dtype, **kw)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _run(layer, x, hx, lengths, weights):
    """Outputs, final states and the gradients of a loss that touches all of them."""
    y, state = layer(x, hx, lengths=lengths)
    states = (state,) if isinstance(state, torch.Tensor) else state
    loss = (y * weights[0]).sum() + sum((s * w).sum() for s, w in zip(states, weights[1:]))
    inputs = [x, *(hx if isinstance(hx, tuple) else (hx,) if hx is not None else ())]
    grads = torch.autograd.grad(loss, [*inputs, *layer.parameters()])
    return (y, *states, *grads)


def _check(name, dtype, bidirectional, num_layers, ragged, initial, **kw):
    ref, fused = _pair(name, dtype, num_layers=num_layers, bidirectional=bidirectional, **kw)
    D = 2 if bidirectional else 1
    g = torch.Generator().manual_seed(2)
    x = torch.randn(T, B, IN, dtype=dtype, generator=g).requires_grad_()
    lengths = torch.tensor([T, 2, T - 1, 1]) if ragged else None
    sizes = ref.state_sizes()  # H per state; h has P units with a projection
    hx = None
    if initial:
        parts = tuple(
            torch.randn(num_layers * D, B, n, dtype=dtype, generator=g).requires_grad_()
            for n in sizes
        )
        hx = parts[0] if len(sizes) == 1 else parts
    weights = [torch.randn(T, B, D * ref.output_size, dtype=dtype, generator=g)] + [
        torch.randn(num_layers * D, B, n, dtype=dtype, generator=g) for n in sizes
    ]
    expected = _run(ref, x, hx, lengths, weights)
    got = _run(fused, x, hx, lengths, weights)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("initial", [False, True], ids=["zero-state", "h0"])
@pytest.mark.parametrize("ragged", [False, True], ids=["equal", "ragged"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("name", FUSED_CELLS)
def test_fused_matches_reference_float64(name, bidirectional, num_layers, ragged, initial):
    _check(name, torch.float64, bidirectional, num_layers, ragged, initial)


@pytest.mark.parametrize("ragged", [False, True], ids=["equal", "ragged"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("name", FUSED_CELLS)
def test_fused_matches_reference_float32(name, bidirectional, ragged):
    _check(name, torch.float32, bidirectional, 2, ragged, True)


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("rnn", {"nonlinearity": "relu"}),
        ("rnn", {"nonlinearity": "sigmoid"}),
        ("lstm", {"bias": False}),
        ("peephole", {"input_activation": "sigmoid"}),
        ("cifg", {"output_gate": False, "output_activation": "identity"}),
        ("lstm1997", {"input_gate": False, "peepholes": True}),
        ("gru", {"bias": False}),
        ("rnn", {"bias": False}),
    ],
)
def test_fused_matches_reference_other_switches(name, kw):
    _check(name, torch.float64, True, 2, True, True, **kw)


@pytest.mark.parametrize("ragged", [False, True], ids=["equal", "ragged"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("name", list(carousel.LSTM_VARIANTS))
def test_fused_projection_matches_reference_float64(name, bidirectional, num_layers, ragged):
    """proj_size (h_t = W_hr m_t) for every LSTM variant: outputs, states, every gradient."""
    _check(name, torch.float64, bidirectional, num_layers, ragged, True, proj_size=3)


@pytest.mark.parametrize("ragged", [False, True], ids=["equal", "ragged"])
@pytest.mark.parametrize("name", ["lstm", "peephole", "cifg", "nog", "noaf"])
def test_fused_projection_matches_reference_float32(name, ragged):
    """float32 runs MKL's packed weights for W_hh and W_hr when the lengths are equal."""
    _check(name, torch.float32, True, 2, ragged, True, proj_size=2)


@pytest.mark.parametrize("name", ["lstm", "peephole", "nig", "nog", "cifg", "noaf"])
def test_gradcheck_fused_projection(name):
    torch.manual_seed(3)
    layer = carousel.make_layer(name, 2, 3, backend="fused", dtype=torch.float64, proj_size=2)
    cell = layer.cell
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 2, 3])
    w = layer.layer_weights(0)
    names = [k for k, v in vars(w).items() if k != "peep" and v is not None]
    params = [getattr(w, k) for k in names] + list(w.peep.values())
    for reverse in (False, True):

        def fn(x, h0, c0, *args, reverse=reverse):
            fields = dict(zip(names, args))
            peep = dict(zip(w.peep, args[len(names) :]))
            lw = carousel.backends.LayerWeights(**fields, peep=peep)
            out, final = BACKENDS["fused"].run(cell, x, (h0, c0), lw, lengths, reverse)
            return (out, *final)

        inputs = (x, h0, c0, *(p.detach().clone().requires_grad_() for p in params))
        assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("name", ["rnn", "gru", "lstm", "peephole", "nig", "nog", "cifg"])
def test_gradcheck_fused(name):
    torch.manual_seed(3)
    layer = carousel.make_layer(name, 2, 3, backend="fused", dtype=torch.float64)
    cell = layer.cell
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    states = tuple(
        torch.randn(3, 3, dtype=torch.float64, requires_grad=True) for _ in cell.state_names
    )
    lengths = torch.tensor([4, 2, 3])
    for reverse in (False, True):
        w = layer.layer_weights(0)
        params = (w.w_ih, w.w_hh, w.b_ih, w.b_hh, *w.peep.values())

        def fn(x, *args, reverse=reverse, w=w):
            state = args[: len(states)]
            w_ih, w_hh, b_ih, b_hh, *peep = args[len(states) :]
            lw = carousel.backends.LayerWeights(w_ih, w_hh, b_ih, b_hh, dict(zip(w.peep, peep)))
            out, final = BACKENDS["fused"].run(cell, x, state, lw, lengths, reverse)
            return (out, *final)

        inputs = (x, *states, *(p.detach().clone().requires_grad_() for p in params))
        assert torch.autograd.gradcheck(fn, inputs)


def test_auto_picks_fused_on_cpu_float():
    cell = carousel.CELLS["gru"]  # the LSTM family goes to "native" where it is built
    for dtype in (torch.float32, torch.float64):
        assert select_backend("auto", cell, torch.zeros(1, dtype=dtype)).name == "fused"
    assert select_backend("auto", cell, torch.zeros(1, dtype=torch.bfloat16)).name == "reference"
    assert not kernels.supports(cell, torch.zeros(1, device="meta"))
    with pytest.raises(ValueError, match="fused"):
        select_backend("fused", cell, torch.zeros(1, dtype=torch.float16))


def test_backward_twice_gives_the_same_gradients():
    """The saved activations are not overwritten by the backward pass (retain_graph)."""
    layer = carousel.LSTM(3, 4, variant="peephole", bidirectional=True)
    x = torch.randn(5, 2, 3, requires_grad=True)
    y, (_, c) = layer(x, lengths=[5, 3])
    loss = y.square().sum() + c.sum()
    first = torch.autograd.grad(loss, [x, *layer.parameters()], retain_graph=True)
    second = torch.autograd.grad(loss, [x, *layer.parameters()])
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fallback_warns_once_and_runs_reference(monkeypatch):
    monkeypatch.setattr(kernels, "_modules", {})
    monkeypatch.setattr(kernels, "_loaded", False)
    monkeypatch.setattr(kernels, "_failure", None)
    monkeypatch.setattr(kernels, "DISABLED", True)
    layer = carousel.GRU(3, 4)
    x = torch.randn(5, 2, 3)
    with pytest.warns(RuntimeWarning, match="fall back to the slower reference path") as record:
        y, _ = layer(x)
        layer(x)
    assert len(record) == 1
    assert kernels.failure() is not None
    assert select_backend("auto", layer.cell, x).name == "reference"
    with pytest.raises(ValueError, match="DISABLED is set"):
        select_backend("fused", layer.cell, x)
    ref = carousel.GRU(3, 4, backend="reference")
    ref.load_state_dict(layer.state_dict())
    torch.testing.assert_close(y, ref(x)[0], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["lstm", "peephole", "nog", "cifg", "gru", "rnn"])
def test_inference_matches_reference(name):
    """Under no_grad the LSTM kernel skips storing its activations; outputs stay exact."""
    ref, fused = _pair(name, torch.float64, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, IN, dtype=torch.float64)
    lengths = torch.tensor([T, 2, T - 1, 1])
    with torch.no_grad():
        for lens in (None, lengths):
            (y1, s1), (y2, s2) = fused(x, lengths=lens), ref(x, lengths=lens)
            torch.testing.assert_close(y1, y2, **TOL[torch.float64])
            torch.testing.assert_close(s1, s2, **TOL[torch.float64])


@pytest.mark.parametrize("name", ["lstm", "peephole", "gru", "rnn"])
def test_bidirectional_pair_matches_one_after_the_other(name, monkeypatch):
    """Both directions on two threads (kernels.pair) == the two directions in sequence."""
    from carousel.kernels import pair

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the pair path needs ≥ 2
    calls = []
    both = pair.both
    monkeypatch.setattr(pair, "both", lambda a, b: calls.append(1) or both(a, b))
    layer = carousel.make_layer(
        name, IN, H, num_layers=2, bidirectional=True, dtype=torch.float64, backend="fused"
    )
    x = torch.randn(T, B, IN, dtype=torch.float64, requires_grad=True)
    results = []
    for enabled in (True, False):
        monkeypatch.setattr(pair, "ENABLED", enabled)
        y, _ = layer(x, lengths=[T, 2, T - 1, 1])
        grads = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])
        results.append((y, *grads))
    assert len(calls) == 4  # per layer one forward and one backward, only while enabled
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------- the registry
class ToyOptions(carousel.RNNOptions):
    """A family of its own with the Elman RNN's math and no fused kernel."""

    family = "toy"


class ToyLayer(carousel.RecurrentLayer):
    """Its layer class, written as carousel.GRU is."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, variant="toy", **kwargs):  # fmt: skip
        from carousel.layers import variant_cell

        cell, kwargs = variant_cell("toy", variant, kwargs)
        super().__init__(cell, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, **kwargs)  # fmt: skip


def test_a_family_without_a_kernel_is_one_record_and_runs_on_the_reference_path(monkeypatch):
    monkeypatch.setitem(carousel.CELLS, "toy", ToyOptions())
    monkeypatch.setitem(
        carousel.FAMILIES, "toy", carousel.Family("toy", ToyOptions, f"{__name__}:ToyLayer")
    )
    layer = carousel.make_layer("toy", IN, H, num_layers=2, bidirectional=True)
    assert isinstance(layer, ToyLayer)
    x = torch.randn(T, B, IN)
    assert not kernels.supports(layer.cell, x)
    assert select_backend("auto", layer.cell, x) is BACKENDS["reference"]
    rnn = carousel.RNN(IN, H, num_layers=2, bidirectional=True)
    rnn.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x)[0], rnn(x)[0])  # the same math, the reference path
    assert "toy" not in FUSED_CELLS  # the fused-path tests read the registry and skip it
