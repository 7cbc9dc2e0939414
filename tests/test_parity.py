"""carousel's standard cells loaded with a torch.nn module's state_dict behave as that module:
outputs, final states and every gradient, for every layout torch.nn accepts; LSTMs with
projections (``proj_size``) included."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import carousel
from helpers import as_tuple, grads

PAIRS = {
    "lstm": (torch.nn.LSTM, carousel.LSTM, {}),
    "lstm_proj": (torch.nn.LSTM, carousel.LSTM, {"proj_size": 3}),
    "gru": (torch.nn.GRU, carousel.GRU, {}),
    "rnn_tanh": (torch.nn.RNN, carousel.RNN, {}),
    "rnn_relu": (torch.nn.RNN, carousel.RNN, {"nonlinearity": "relu"}),
}
#: torch.nn.LSTM's oneDNN path has no projections; torch says so and runs its own
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float64: {"rtol": 1e-10, "atol": 1e-10}}


def pair(kind, dtype, **kw):
    ref_cls, our_cls, extra = PAIRS[kind]
    ref = ref_cls(3, 5, **extra, **kw).to(dtype)
    ours = our_cls(3, 5, **extra, **kw).to(dtype)
    ours.load_state_dict(ref.state_dict())  # strict: identical keys and shapes
    return ref, ours


def assert_same_run(ref, ours, inputs, hx, dtype, **forward_kwargs):
    """Same outputs, final states and gradients w.r.t. input, hx and every parameter."""
    x_ref, x_ours = inputs
    out_r, h_r = ref(x_ref, hx)
    out_o, h_o = ours(x_ours, hx, **forward_kwargs)
    data = lambda o: o.data if isinstance(o, torch.nn.utils.rnn.PackedSequence) else o  # noqa: E731
    tol = TOL[dtype]
    torch.testing.assert_close(data(out_o), data(out_r), **tol)
    for a, b in zip(as_tuple(h_o), as_tuple(h_r)):
        torch.testing.assert_close(a, b, **tol)
    leaves = [t for t in (*as_tuple(hx),) if t is not None and t.requires_grad]
    g_r = grads((data(out_r), *as_tuple(h_r)), [*leaves, *ref.parameters()])
    g_o = grads((data(out_o), *as_tuple(h_o)), [*leaves, *ours.parameters()])
    for a, b in zip(g_o, g_r):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize(
    ("kind", "dtype", "num_layers", "bidirectional", "batch_first"),
    list(
        itertools.product(
            PAIRS, [torch.float32, torch.float64], [1, 3], [False, True], [False, True]
        )
    ),
)
def test_padded_input(kind, dtype, num_layers, bidirectional, batch_first):
    torch.manual_seed(0)
    ref, ours = pair(
        kind, dtype, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first
    )
    x = torch.randn(4, 6, 3, dtype=dtype)  # (B, T, I) or (T, B, I): both are valid shapes
    sizes = ours.state_sizes()  # (H,), (H, H) or, projected, (P, H)
    LD = num_layers * (2 if bidirectional else 1)
    B = 4 if batch_first else 6
    hx = tuple(torch.randn(LD, B, n, dtype=dtype, requires_grad=True) for n in sizes)
    assert_same_run(ref, ours, (x, x), hx[0] if len(sizes) == 1 else hx, dtype)
    assert_same_run(ref, ours, (x, x), None, dtype)


@pytest.mark.parametrize(
    ("kind", "num_layers", "bidirectional", "enforce_sorted"),
    list(itertools.product(PAIRS, [1, 2], [False, True], [False, True])),
)
def test_packed_input(kind, num_layers, bidirectional, enforce_sorted):
    """Packed input (sorted or not) to both, and carousel's ``lengths=`` against torch's
    packed run."""
    torch.manual_seed(0)
    dtype = torch.float64
    ref, ours = pair(kind, dtype, num_layers=num_layers, bidirectional=bidirectional)
    lengths = torch.tensor([7, 5, 5, 2]) if enforce_sorted else torch.tensor([2, 7, 5, 1])
    x = torch.randn(7, 4, 3, dtype=dtype)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    assert_same_run(ref, ours, (packed, packed), None, dtype)

    out_r, h_r = ref(packed)
    out_o, h_o = ours(x, lengths=lengths)
    padded_r, _ = torch.nn.utils.rnn.pad_packed_sequence(out_r, total_length=7)
    torch.testing.assert_close(out_o, padded_r, **TOL[dtype])
    for a, b in zip(as_tuple(h_o), as_tuple(h_r)):
        torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("kind", list(PAIRS))
def test_unbatched_input(kind):
    ref, ours = pair(kind, torch.float64, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, dtype=torch.float64)
    assert_same_run(ref, ours, (x, x), None, torch.float64)


@pytest.mark.parametrize("kind", ["lstm", "lstm_proj", "gru", "rnn_tanh"])
def test_state_dict_keys_and_order_match_torch_nn(kind):
    ref, ours = pair(kind, torch.float32, num_layers=3, bidirectional=True)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [p.shape for p in ours.parameters()] == [p.shape for p in ref.parameters()]
    ref.load_state_dict(ours.state_dict())  # and back again


@pytest.mark.parametrize("bias", [True, False])
def test_projection_shapes_match_torch_nn(bias):
    ref = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2, bias=bias)
    ours = carousel.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2, bias=bias)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [
        (n, p.shape) for n, p in ref.named_parameters()
    ]
    assert ours.proj_size == ref.proj_size == 2
    x = torch.randn(4, 6, 3)
    (y1, (h1, c1)), (y2, (h2, c2)) = ref(x), ours(x)
    assert y1.shape == y2.shape == (4, 6, 4)
    assert h1.shape == h2.shape == (4, 6, 2) and c1.shape == c2.shape == (4, 6, 5)
