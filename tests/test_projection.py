"""LSTMs with projections (``proj_size``, Sak et al. 2014): the reference step's equation, the
options' and the layer's validation, the bfloat16 path and torch.func.  Parity with
torch.nn.LSTM(proj_size=…) is in test_parity.py, fused == reference in test_fused.py,
gradgradcheck in test_higher_order.py."""

from __future__ import annotations

import pytest
import torch

import carousel
from carousel.cells.lstm import lstm_step


def test_reference_step_projects_the_output():
    """h_t = W_hr (o_t ⊙ tanh(s_t)); the state s_t is the unprojected cell's."""
    torch.manual_seed(0)
    opt = carousel.get_cell("lstm", proj_size=2)
    B, H, P = 3, 4, 2
    gx, h, s = torch.randn(B, 4 * H), torch.randn(B, P), torch.randn(B, H)
    w_hh, b_hh, w_hr = torch.randn(4 * H, P), torch.randn(4 * H), torch.randn(P, H)
    h1, s1 = opt.step(gx, (h, s), w_hh, b_hh, {}, w_hr=w_hr)
    i, f, g, o = (gx + h @ w_hh.T + b_hh).chunk(4, dim=1)
    s_want = torch.sigmoid(f) * s + torch.sigmoid(i) * torch.tanh(g)
    torch.testing.assert_close(s1, s_want)
    torch.testing.assert_close(h1, (torch.sigmoid(o) * torch.tanh(s_want)) @ w_hr.T)
    m, _ = lstm_step(gx, h, s, w_hh, b_hh, {}, carousel.get_cell("lstm"))
    torch.testing.assert_close(h1, m @ w_hr.T)
    with pytest.raises(ValueError, match="weight_hr"):
        opt.step(gx, (h, s), w_hh, b_hh, {})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"proj_size": 5}, "proj_size has to be smaller than hidden_size"),
        ({"proj_size": 7}, "proj_size has to be smaller than hidden_size"),
        ({"proj_size": -1}, "proj_size should be a positive integer or zero"),
        ({"proj_size": 1.5}, "proj_size should be a positive integer or zero"),
        ({"proj_size": True}, "proj_size should be a positive integer or zero"),
    ],
)
def test_bad_proj_size(kwargs, message):
    with pytest.raises(ValueError, match=message):
        carousel.LSTM(3, 5, **kwargs)


def test_proj_size_zero_is_the_plain_lstm():
    a, b = carousel.LSTM(3, 5, proj_size=0), carousel.LSTM(3, 5)
    assert a.cell == b.cell and list(a.state_dict()) == list(b.state_dict())
    assert a.proj_size == 0 and a.output_size == 5


@pytest.mark.parametrize("variant", carousel.LSTM_VARIANTS)
def test_every_variant_one_argument_away(variant):
    layer = carousel.make_layer(variant, 3, 6, proj_size=2, num_layers=2, bidirectional=True)
    assert layer.weight_hr_l1_reverse.shape == (2, 6)
    assert layer.weight_ih_l1.shape[1] == 4 and layer.weight_hh_l0.shape[1] == 2
    y, (h, c) = layer(torch.randn(5, 2, 3), lengths=[5, 3])
    assert y.shape == (5, 2, 4) and h.shape == (4, 2, 2) and c.shape == (4, 2, 6)
    assert "proj_size=2" in repr(layer)


def test_state_of_the_wrong_size_names_p():
    layer = carousel.LSTM(3, 5, proj_size=2)
    h0, c0 = torch.zeros(1, 4, 5), torch.zeros(1, 4, 5)
    with pytest.raises(
        ValueError, match=r"size \(1, 4, 2\), got \[1, 4, 5\] \(h0 is \(L·D, B, P\)\)"
    ):
        layer(torch.randn(6, 4, 3), (h0, c0))


def test_bf16_projection_is_close_to_float32():
    torch.manual_seed(0)
    ref = carousel.LSTM(16, 32, proj_size=8, num_layers=2, bidirectional=True)
    ref.backend = "reference"
    fused = carousel.LSTM(16, 32, proj_size=8, num_layers=2, bidirectional=True)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(6, 40, 16, requires_grad=True)  # 40 rows: bfloat16 per-step products too
    lengths = torch.randint(1, 7, (40,))
    results = []
    for layer, autocast in ((fused, True), (ref, False)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y, (h, c) = layer(x, lengths=lengths)
        grads = torch.autograd.grad(y.sum() + c.sum(), [x, *layer.parameters()])
        results.append((y, h, c, *grads))
    for a, b in zip(*results):
        assert a.dtype == torch.float32
        assert (a - b).norm() / b.norm() < 3e-2


def test_torch_func_per_sample_gradients_with_projection():
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    fused = carousel.LSTM(2, 4, proj_size=2, bidirectional=True, dtype=torch.float64)
    ref = carousel.LSTM(2, 4, proj_size=2, bidirectional=True, dtype=torch.float64)
    ref.backend = "reference"
    ref.load_state_dict(fused.state_dict())
    params = {k: v.detach() for k, v in fused.named_parameters()}
    xs = torch.randn(3, 5, 2, dtype=torch.float64)  # 3 unbatched sequences

    def loss(layer):
        return lambda p, x: functional_call(layer, p, (x,))[0].sin().sum()

    got = vmap(grad(loss(fused)), in_dims=(None, 0))(params, xs)
    want = vmap(grad(loss(ref)), in_dims=(None, 0))(params, xs)
    for k in params:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12)
