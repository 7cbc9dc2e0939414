"""Layers against their cells: loops, chunks, packing, directions, state, gradcheck."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import carousel
from carousel.backends import reverse_padded
from carousel.cells import CELLS
from helpers import as_tuple, grads, layer_function, random_state

NAMES = list(CELLS)
D64 = torch.float64


def make(name, I=3, H=4, **kw):
    torch.manual_seed(0)
    return carousel.make_layer(name, I, H, **kw).double()


@pytest.mark.parametrize("name", NAMES)
def test_layer_equals_a_python_loop_of_the_step(name):
    layer = make(name, num_layers=2)
    x = torch.randn(6, 3, 3, dtype=D64)
    out, h_n = layer(x)
    inp, finals = x, []
    for k in range(2):
        w = layer.layer_weights(k)
        state = tuple(torch.zeros(3, 4, dtype=D64) for _ in layer.cell.state_names)
        outs = []
        for t in range(6):
            state = layer.cell.step(inp[t] @ w.w_ih.T + w.b_ih, state, w.w_hh, w.b_hh, w.peep)
            outs.append(state[0])
        inp = torch.stack(outs)
        finals.append(state)
    torch.testing.assert_close(out, inp, rtol=1e-12, atol=1e-12)
    for got, expect in zip(as_tuple(h_n), zip(*finals)):
        torch.testing.assert_close(got, torch.stack(expect), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["lstm", "lstm1997", "gru", "rnn", "cifg"])
def test_chunks_with_carried_state_equal_the_whole(name):
    layer = make(name, num_layers=2)
    x = torch.randn(10, 2, 3, dtype=D64)
    whole, h_whole = layer(x)
    parts, state = [], None
    for chunk in x.split([3, 4, 3]):
        y, state = layer(chunk, state)
        parts.append(y)
        state = carousel.detach_state(state)
    torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-12, atol=1e-12)
    for a, b in zip(as_tuple(state), as_tuple(h_whole)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("name", "bidirectional"), list(itertools.product(NAMES, [False, True])))
def test_ragged_batch_equals_each_sequence_alone(name, bidirectional):
    layer = make(name, num_layers=2, bidirectional=bidirectional)
    lengths = torch.tensor([4, 7, 1, 5])  # unsorted on purpose
    x = torch.randn(7, 4, 3, dtype=D64)
    hx = tuple(s.detach() for s in random_state(layer, 4))
    hx_arg = hx[0] if len(hx) == 1 else hx
    out, h_n = layer(x, hx_arg, lengths=lengths)
    packed_out, packed_h = layer(pack_padded_sequence(x, lengths, enforce_sorted=False), hx_arg)
    padded, out_lengths = pad_packed_sequence(packed_out)
    assert torch.equal(out_lengths, lengths)
    torch.testing.assert_close(padded, out, rtol=1e-12, atol=1e-12)
    for b, n in enumerate(lengths.tolist()):
        alone_hx = tuple(s[:, b : b + 1] for s in hx)
        alone, alone_h = layer(x[:n, b : b + 1], alone_hx[0] if len(hx) == 1 else alone_hx)
        torch.testing.assert_close(out[:n, b : b + 1], alone, rtol=1e-12, atol=1e-12)
        assert torch.all(out[n:, b] == 0), "padded positions must be zero"
        for got, both, expect in zip(as_tuple(h_n), as_tuple(packed_h), as_tuple(alone_h)):
            torch.testing.assert_close(got[:, b : b + 1], expect, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(both[:, b : b + 1], expect, rtol=1e-12, atol=1e-12)


def test_sorted_packed_input_keeps_its_layout():
    layer = make("gru")
    lengths = torch.tensor([5, 3, 2])
    packed = pack_padded_sequence(torch.randn(5, 3, 3, dtype=D64), lengths)
    out, _ = layer(packed)
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    assert out.sorted_indices is None and out.data.shape == (10, 4)


@pytest.mark.parametrize("name", ["lstm", "peephole", "gru", "rnn"])
def test_backward_direction_is_the_forward_layer_on_reversed_sequences(name):
    bi = make(name, bidirectional=True)
    fwd = make(name)
    fwd.load_state_dict(
        {k.replace("_reverse", ""): v for k, v in bi.state_dict().items() if k.endswith("_reverse")}
    )
    lengths = torch.tensor([3, 6, 5])
    x = torch.randn(6, 3, 3, dtype=D64)
    out, h_n = bi(x, lengths=lengths)
    rev_out, rev_h = fwd(reverse_padded(x, lengths), lengths=lengths)
    torch.testing.assert_close(
        out[..., 4:], reverse_padded(rev_out, lengths), rtol=1e-12, atol=1e-12
    )
    for a, b in zip(as_tuple(h_n), as_tuple(rev_h)):
        torch.testing.assert_close(a[1:2], b, rtol=1e-12, atol=1e-12)


def test_reverse_padded_reverses_within_each_length():
    x = torch.arange(4.0).view(4, 1, 1).repeat(1, 2, 1)  # (T=4, B=2, 1): 0 1 2 3
    r = reverse_padded(x, torch.tensor([4, 2]))
    assert r[:, 0, 0].tolist() == [3, 2, 1, 0]
    assert r[:, 1, 0].tolist() == [1, 0, 2, 3]
    assert torch.equal(reverse_padded(r, torch.tensor([4, 2])), x)


def test_batch_first_and_unbatched_agree_with_time_first():
    layer = make("lstm", num_layers=2, bidirectional=True)
    bf = make("lstm", num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(5, 2, 3, dtype=D64)
    out, (h, c) = layer(x)
    out_bf, (h_bf, c_bf) = bf(x.transpose(0, 1).contiguous())
    torch.testing.assert_close(out_bf.transpose(0, 1), out)
    torch.testing.assert_close((h_bf, c_bf), (h, c))
    one, (h1, c1) = layer(x[:, 0], (h[:, 0], c[:, 0]))  # unbatched: (T, I), states (L·D, H)
    ref, (hr, cr) = layer(x[:, :1], (h[:, :1], c[:, :1]))
    assert one.shape == (5, 8) and h1.shape == (4, 4)
    torch.testing.assert_close(one, ref[:, 0])
    torch.testing.assert_close((h1, c1), (hr[:, 0], cr[:, 0]))


def test_reset_zeroes_the_state_of_ended_documents():
    layer = make("lstm", num_layers=2)
    x = torch.randn(4, 3, 3, dtype=D64)
    _, state = layer(x)
    reset = torch.tensor([True, False, True])
    out, _ = layer(x, state, reset=reset)
    fresh, _ = layer(x)
    kept, _ = layer(x, state)
    torch.testing.assert_close(out[:, [0, 2]], fresh[:, [0, 2]])
    torch.testing.assert_close(out[:, 1], kept[:, 1])
    zeroed = carousel.reset_state(state, reset)
    assert torch.all(zeroed[0][:, [0, 2]] == 0) and torch.all(zeroed[1][:, 1] == state[1][:, 1])


def test_detach_state_cuts_the_graph():
    layer = make("lstm")
    _, state = layer(torch.randn(3, 2, 3, dtype=D64))
    assert all(s.requires_grad for s in state)
    detached = carousel.detach_state(state)
    assert not any(s.requires_grad for s in detached)
    assert carousel.detach_state(None) is None


def test_dropout_acts_between_layers_in_training_only():
    layer = make("lstm", num_layers=3, dropout=0.5)
    x = torch.randn(5, 2, 3, dtype=D64)
    layer.eval()
    a, b = layer(x)[0], layer(x)[0]
    torch.testing.assert_close(a, b)
    layer.train()
    torch.manual_seed(1)
    c = layer(x)[0]
    torch.manual_seed(2)
    d = layer(x)[0]
    assert not torch.allclose(c, d)
    plain = make("lstm", num_layers=3)
    torch.testing.assert_close(plain(x)[0], a)  # same seed → same weights, no dropout in eval


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="num_layers=1"):
        carousel.LSTM(3, 4, dropout=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        carousel.LSTM(3, 4, num_layers=2, dropout=0.2)


def test_no_bias_layers_have_no_bias_parameters():
    layer = make("peephole", bias=False, bidirectional=True)
    assert not any("bias" in k for k in layer.state_dict())
    out, _ = layer(torch.randn(3, 2, 3, dtype=D64))
    assert out.shape == (3, 2, 8)


def test_the_backend_seam_runs_registered_kernels(monkeypatch):
    """A registered backend is used by name and by "auto"; the reference stays selectable."""
    calls = []

    def spy(cell, x, state, weights, lengths, reverse):
        calls.append((cell.family, tuple(x.shape), reverse))
        return carousel.backends.reference_sequence(cell, x, state, weights, lengths, reverse)

    monkeypatch.setitem(
        carousel.BACKENDS, "spy", carousel.Backend("spy", spy, lambda cell, x: cell.family == "gru")
    )
    gru = make("gru", bidirectional=True)
    x = torch.randn(4, 2, 3, dtype=D64)
    expect = make("gru", bidirectional=True, backend="reference")(x)[0]
    torch.testing.assert_close(gru(x)[0], expect)
    assert calls == [("gru", (4, 2, 3), False), ("gru", (4, 2, 3), True)]
    calls.clear()
    make("lstm")(x)  # auto: the spy does not support LSTM cells
    assert calls == []
    with pytest.raises(ValueError, match="cannot run cell family 'lstm'"):
        make("lstm", backend="spy")(x)


@pytest.mark.parametrize(
    ("name", "bidirectional", "num_layers", "ragged"),
    list(itertools.product(NAMES, [False, True], [1, 2], [False, True])),
)
def test_gradcheck(name, bidirectional, num_layers, ragged):
    """Gradients of the output and final states with respect to the input, the initial
    state and every parameter, checked against finite differences in float64."""
    layer = make(name, I=2, H=2, num_layers=num_layers, bidirectional=bidirectional)
    lengths = torch.tensor([3, 1]) if ragged else None
    x = torch.randn(3, 2, 2, dtype=D64, requires_grad=True)
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    f = layer_function(layer, lengths=lengths)
    assert torch.autograd.gradcheck(f, (x, *random_state(layer, 2), *params))


def test_gradients_flow_into_every_parameter():
    layer = make("peephole", num_layers=2, bidirectional=True)
    x = torch.randn(4, 2, 3, dtype=D64, requires_grad=True)
    out, (h, c) = layer(x, lengths=[4, 2])
    g = grads((out, h, c), [x, *layer.parameters()])
    assert all(gi is not None and gi.abs().sum() > 0 for gi in g)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "peephole"])
def test_zero_sequences_as_torch(cell):
    """A batch of 0 sequences gives (T, 0, D·H) outputs and (L·D, 0, H) states, and backward
    runs (torch.nn's behaviour); T = 0 is torch.nn's RuntimeError."""
    layer = carousel.make_layer(cell, 3, 4, num_layers=2, bidirectional=True)
    out, h = layer(torch.zeros(5, 0, 3))
    assert out.shape == (5, 0, 8)
    assert all(s.shape == (4, 0, 4) for s in (h if isinstance(h, tuple) else (h,)))
    out.sum().backward()
    with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0"):
        layer(torch.zeros(0, 2, 3))


def test_flat_weights_follow_weight_norm():
    """torch.nn's ``_flat_weights`` mirror the current tensors, so weight norm shows there."""
    lstm = carousel.LSTM(8, 8)
    x = torch.randn(4, 2, 8)
    expected, _ = lstm(x)
    names = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    assert lstm._flat_weights_names == names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.nn.utils.weight_norm(lstm, name="weight_hh_l0")
    assert sum(isinstance(w, torch.nn.Parameter) for w in lstm._flat_weights) == 3
    torch.testing.assert_close(lstm(x)[0], expected)
    torch.nn.utils.remove_weight_norm(lstm, name="weight_hh_l0")
    assert sum(isinstance(w, torch.nn.Parameter) for w in lstm._flat_weights) == 4


def test_rnn_nonlinearity_attribute():
    assert carousel.RNN(2, 3).nonlinearity == "tanh"
    assert carousel.RNN(2, 3, 1, "relu").nonlinearity == "relu"
