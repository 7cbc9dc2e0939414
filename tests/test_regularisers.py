"""Regularisers and layer normalisation: zoneout, recurrent (variational) and update dropout,
DropConnect on W_hh, layer norm.

The fused kernels against the reference twin with the same masks (a seeded draw in the layer,
or masks handed to the backends directly): outputs, final states, every gradient; gradcheck
in float64; the masks' structure; eval mode; the equations by hand; validation; dispatch.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import carousel
from carousel.backends import BACKENDS, Backend, reference_sequence, select_backend
from carousel.cells.masks import Masks, draw_masks
from helpers import FUSED_CELLS, as_tuple

T, B, IN, H = 5, 4, 3, 4
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-12}, torch.float32: {"rtol": 1e-5, "atol": 2e-6}}
LSTM_ONLY = ("zoneout_state", "update_dropout")
ALL_RATES = {
    "zoneout_state": 0.3,
    "zoneout_hidden": 0.3,
    "recurrent_dropout": 0.3,
    "update_dropout": 0.3,
    "weight_drop": 0.3,
}
SINGLE = [{name: 0.4} for name in ALL_RATES]


def _options(family: str, rates: dict) -> dict:
    return {k: v for k, v in rates.items() if family == "lstm" or k not in LSTM_ONLY}


def _pair(name, dtype, **kw):
    torch.manual_seed(1)
    ref = carousel.make_layer(name, IN, H, backend="reference", dtype=dtype, **kw)
    _move_layer_norm(ref)
    fused = carousel.make_layer(name, IN, H, backend="fused", dtype=dtype, **kw)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _move_layer_norm(layer):
    """Layer norm's gains and biases away from their start (1, 0), so that each one counts."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "_ln_" in name:
                p.uniform_(0.5, 1.5) if name.startswith("weight") else p.uniform_(-0.5, 0.5)


def _run(layer, x, hx, lengths, weights, seed=7):
    """Outputs, final states and every gradient of a loss touching all of them, with the
    masks of a seeded draw (the same draws on every backend)."""
    torch.manual_seed(seed)
    y, state = layer(x, hx, lengths=lengths)
    states = as_tuple(state)
    loss = (y * weights[0]).sum() + sum((s * w).sum() for s, w in zip(states, weights[1:]))
    inputs = [x, *(as_tuple(hx) if hx is not None else ())]
    got = torch.autograd.grad(loss, [*inputs, *layer.parameters()])
    return (y, *states, *got)


def _check(name, dtype, rates, bidirectional=True, num_layers=2, ragged=True, tol=None, **kw):
    """The fused layer against the reference twin with the same masks: outputs, final states,
    every gradient; and the masks (or layer norm) change the plain cell's outputs."""
    cell = carousel.CELLS[name]
    ref, fused = _pair(
        name,
        dtype,
        num_layers=num_layers,
        bidirectional=bidirectional,
        **_options(cell.family, rates),
        **kw,
    )
    D = 2 if bidirectional else 1
    g = torch.Generator().manual_seed(2)
    x = torch.randn(T, B, IN, dtype=dtype, generator=g).requires_grad_()
    lengths = torch.tensor([T, 2, T - 1, 1]) if ragged else None
    sizes = ref.state_sizes()
    parts = tuple(
        torch.randn(num_layers * D, B, n, dtype=dtype, generator=g).requires_grad_() for n in sizes
    )
    hx = parts[0] if len(sizes) == 1 else parts
    weights = [torch.randn(T, B, D * ref.output_size, dtype=dtype, generator=g)] + [
        torch.randn(num_layers * D, B, n, dtype=dtype, generator=g) for n in sizes
    ]
    expected = _run(ref, x, hx, lengths, weights)
    got = _run(fused, x, hx, lengths, weights)
    for a, b in zip(got, expected, strict=True):
        if tol is None:
            torch.testing.assert_close(a, b, **TOL[dtype])
        else:  # relative to the tensor's largest entry
            assert (a - b).abs().max() <= tol * b.abs().max() + 1e-6
    plain = carousel.make_layer(
        name, IN, H, num_layers=num_layers, bidirectional=bidirectional, dtype=dtype, **kw
    )
    if not ref.cell.layer_norm_on:
        plain.load_state_dict(ref.state_dict())
        assert not torch.allclose(_run(plain, x, hx, lengths, weights)[0], got[0]), (
            "the masks changed nothing"
        )


# ----------------------------------------------------------------- fused == reference
def _kernel_cells(family_features: str) -> list[str]:
    return [
        name
        for name in FUSED_CELLS
        if family_features in carousel.kernels.features(carousel.CELLS[name])
    ]


@pytest.mark.parametrize("name", list(carousel.LSTM_VARIANTS))
def test_every_lstm_variant_all_regularisers_float64(name):
    _check(name, torch.float64, ALL_RATES)


@pytest.mark.parametrize("name", list(carousel.LSTM_VARIANTS))
def test_every_lstm_variant_all_regularisers_projection(name):
    _check(name, torch.float64, ALL_RATES, proj_size=3)


@pytest.mark.parametrize("proj", [0, 3], ids=["P0", "P3"])
@pytest.mark.parametrize("rates", [{}, ALL_RATES], ids=["alone", "with-all-five"])
@pytest.mark.parametrize("name", list(carousel.LSTM_VARIANTS))
def test_layer_norm_every_lstm_variant_float64(name, rates, proj):
    _check(name, torch.float64, rates, layer_norm=True, proj_size=proj)


@pytest.mark.parametrize("ragged", [False, True], ids=["equal", "ragged"])
def test_layer_norm_float32(ragged):
    """float32 to 1e-4 of each tensor's largest entry: 1/σ of a 4-unit row amplifies the
    products' rounding (float64 above holds to 1e-10)."""
    tol = 1e-4
    _check("lstm", torch.float32, ALL_RATES, ragged=ragged, tol=tol, layer_norm=True)
    _check("peephole", torch.float32, {}, ragged=ragged, tol=tol, layer_norm=True, proj_size=2)


@pytest.mark.parametrize("rates", SINGLE, ids=list(ALL_RATES))
@pytest.mark.parametrize("name", ["lstm", "peephole", "cifg", "lstm1997"])
@pytest.mark.parametrize("layout", ["uni-L1-equal", "bi-L2-ragged"])
def test_each_regulariser_alone_float64(name, rates, layout):
    bi = layout.startswith("bi")
    _check(name, torch.float64, rates, bidirectional=bi, num_layers=2 if bi else 1, ragged=bi)


@pytest.mark.parametrize("rates", SINGLE, ids=list(ALL_RATES))
@pytest.mark.parametrize("ragged", [False, True], ids=["equal", "ragged"])
def test_each_regulariser_float32(rates, ragged):
    """float32 with equal lengths runs MKL's packed weights."""
    _check("lstm", torch.float32, rates, ragged=ragged)
    _check("peephole", torch.float32, rates, ragged=ragged, proj_size=2)


@pytest.mark.parametrize("name", ["rnn", "gru"])
@pytest.mark.parametrize("rates", [*SINGLE[1:3], SINGLE[4]], ids=lambda r: next(iter(r)))
def test_gru_rnn_regularisers_fused_or_fallback(name, rates):
    """GRU and RNN: zoneout on h, recurrent dropout, DropConnect — the fused kernel where it
    runs them (equal to the reference), else the layer runs the reference path."""
    cell = carousel.get_cell(name, **rates)
    wanted = frozenset(k for k in rates if k != "weight_drop")
    if wanted <= carousel.kernels.features(cell):
        _check(name, torch.float64, rates)
    else:
        x = torch.randn(T, B, IN, dtype=torch.float64)
        assert select_backend("auto", cell, x, wanted).name == "reference"
        with pytest.raises(carousel.ArgumentError, match="cannot run"):
            select_backend("fused", cell, x, wanted)


def _explicit_masks(dtype, g, P=H, eval_rate=None):
    """Fixed masks, by hand: binary zoneout (or a constant rate, as in eval mode)."""
    zs = torch.rand(T, B, H, generator=g, dtype=dtype) < 0.4
    zh = torch.rand(T, B, P, generator=g, dtype=dtype) < 0.4
    rd = (torch.rand(B, P, generator=g, dtype=dtype) < 0.7) / 0.7
    ud = (torch.rand(T, B, H, generator=g, dtype=dtype) < 0.7) / 0.7
    zs, zh = zs.to(dtype), zh.to(dtype)
    if eval_rate is not None:
        zs, zh = torch.full_like(zs, eval_rate), torch.full_like(zh, eval_rate)
    return Masks(zoneout_state=zs, zoneout_hidden=zh, recurrent=rd.to(dtype), update=ud.to(dtype))


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("eval_rate", [None, 0.25], ids=["binary", "expectation"])
@pytest.mark.parametrize("name", ["lstm", "peephole", "cifg", "niaf", "nog"])
def test_backends_with_explicit_masks(name, eval_rate, reverse):
    """The masks handed to both backends directly, outside the layer's draw."""
    dtype = torch.float64
    g = torch.Generator().manual_seed(3)
    layer = carousel.make_layer(name, IN, H, dtype=dtype)
    w = layer.layer_weights(0)
    masks = _explicit_masks(dtype, g, eval_rate=eval_rate)
    x = torch.randn(T, B, IN, dtype=dtype, generator=g, requires_grad=True)
    state = tuple(torch.randn(B, H, dtype=dtype, generator=g, requires_grad=True) for _ in "hc")
    lengths = torch.tensor([T, 3, 1, T - 1])
    results = []
    for backend in ("reference", "fused"):
        out, final = BACKENDS[backend].run(layer.cell, x, state, w, lengths, reverse, masks=masks)
        loss = (out * out.detach().sin()).sum() + final[0].sum() * 0.3 - final[1].sum() * 0.2
        params = [x, *state, *layer.parameters()]
        results.append((out, *final, *torch.autograd.grad(loss, params)))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])


# ----------------------------------------------------------------- gradcheck
@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("lstm", {}),
        ("peephole", {}),
        ("cifg", {"proj_size": 2}),
        ("lstm1997", {"input_activation": "sigmoid"}),
        ("noaf", {"proj_size": 2}),
        ("lstm", {"layer_norm": True}),
        ("peephole", {"layer_norm": True, "proj_size": 2}),
        ("niaf", {"layer_norm": True}),
    ],
)
def test_gradcheck_fused_with_masks(name, kw):
    """Every input, state and parameter, with the same masks at every evaluation (the layer
    reseeded inside the function)."""
    torch.manual_seed(3)
    dtype = torch.float64
    layer = carousel.make_layer(
        name, 2, 3, backend="fused", dtype=dtype, bidirectional=True, **ALL_RATES, **kw
    )
    _move_layer_norm(layer)
    names = [n for n, _ in layer.named_parameters()]
    x = torch.randn(4, 3, 2, dtype=dtype, requires_grad=True)
    sizes = layer.state_sizes()
    hx = tuple(torch.randn(2, 3, n, dtype=dtype, requires_grad=True) for n in sizes)
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    lengths = torch.tensor([4, 2, 3])

    def f(x, h0, c0, *ps):
        torch.manual_seed(11)
        out, (h, c) = torch.func.functional_call(
            layer, dict(zip(names, ps)), (x, (h0, c0)), {"lengths": lengths}
        )
        return out, h, c

    assert torch.autograd.gradcheck(f, (x, *hx, *params), check_batched_grad=False)


@pytest.mark.parametrize("name", ["gru", "rnn"])
def test_gradcheck_fused_gru_rnn_with_masks(name):
    """GRU and RNN with what their kernels run (zoneout on h for the GRU, recurrent dropout,
    DropConnect; the RNN's zoneout goes to the reference path, checked all the same)."""
    torch.manual_seed(3)
    dtype = torch.float64
    rates = _options("gru", ALL_RATES)
    layer = carousel.make_layer(name, 2, 3, dtype=dtype, bidirectional=True, **rates)
    names = [n for n, _ in layer.named_parameters()]
    x = torch.randn(4, 3, 2, dtype=dtype, requires_grad=True)
    h0 = torch.randn(2, 3, 3, dtype=dtype, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    lengths = torch.tensor([4, 2, 3])

    def f(x, h0, *ps):
        torch.manual_seed(11)
        return torch.func.functional_call(
            layer, dict(zip(names, ps)), (x, h0), {"lengths": lengths}
        )

    assert torch.autograd.gradcheck(f, (x, h0, *params), check_batched_grad=False)


def test_second_derivative_with_masks():
    """create_graph through the fused kernel with masks: the reference twin's second
    derivative, with the same masks."""
    dtype = torch.float64
    torch.manual_seed(0)
    fused = carousel.LSTM(2, 3, dtype=dtype, backend="fused", **ALL_RATES)
    ref = carousel.LSTM(2, 3, dtype=dtype, backend="reference", **ALL_RATES)
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(4, 2, 2, dtype=dtype, requires_grad=True)
    got = []
    for layer in (ref, fused):
        torch.manual_seed(5)
        out, _ = layer(x)
        (gx,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
        got.append(torch.autograd.grad(gx.square().sum(), [x, *layer.parameters()]))
    for a, b in zip(*got, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])


# ----------------------------------------------------------------- the masks
def test_variational_mask_one_per_sequence_and_independent():
    torch.manual_seed(0)
    cell = carousel.get_cell("lstm", recurrent_dropout=0.5)
    x = torch.empty(50, 300, 3)
    m = draw_masks(cell, x, 32, 32, training=True)
    assert m.recurrent.shape == (300, 32)  # (B, P): no time dimension, one per sequence
    assert set(m.recurrent.unique().tolist()) == {0.0, 2.0}  # inverted dropout, 1/(1 − p)
    assert abs((m.recurrent == 0).float().mean().item() - 0.5) < 0.02
    assert len({tuple(r.tolist()) for r in m.recurrent}) == 300  # every sequence its own
    corr = torch.corrcoef(m.recurrent)  # (300, 300): between sequences
    off = corr[~torch.eye(300, dtype=torch.bool)]
    assert off.abs().mean() < 0.2  # independent: |r| ≈ 0.14 for 32 units
    again = draw_masks(cell, x, 32, 32, training=True)
    assert not torch.equal(again.recurrent, m.recurrent)  # a fresh draw per call


def test_variational_mask_applies_at_every_step():
    """By hand: W_hh (m ⊙ h_{t−1}) with the same m at every step, the rest torch.nn's LSTM."""
    torch.manual_seed(0)
    layer = carousel.LSTM(IN, H, recurrent_dropout=0.5, backend="fused", dtype=torch.float64)
    ref = torch.nn.LSTMCell(IN, H, dtype=torch.float64)
    ref.load_state_dict({k[:-3]: v for k, v in layer.state_dict().items()})
    x = torch.randn(T, B, IN, dtype=torch.float64)
    torch.manual_seed(9)
    got, _ = layer(x)
    torch.manual_seed(9)
    (m,) = layer.layer_masks(x, 0)
    h = c = torch.zeros(B, H, dtype=torch.float64)
    for t in range(T):
        a = F.linear(x[t], ref.weight_ih, ref.bias_ih) + F.linear(
            m.recurrent * h, ref.weight_hh, ref.bias_hh
        )
        i, f, g, o = a.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        torch.testing.assert_close(got[t], h, **TOL[torch.float64])


def test_per_step_masks_differ_across_steps_and_directions():
    torch.manual_seed(0)
    layer = carousel.LSTM(IN, H, bidirectional=True, zoneout_state=0.5, update_dropout=0.5)
    fwd, bwd = layer.layer_masks(torch.empty(20, 30, IN), 0)
    for m in (fwd.zoneout_state, fwd.update):
        assert m.shape == (20, 30, H)
        assert not torch.equal(m[0], m[1])
    assert not torch.equal(fwd.zoneout_state, bwd.zoneout_state)
    assert set(fwd.zoneout_state.unique().tolist()) == {0.0, 1.0}


def test_masks_follow_torch_rng_state():
    """The same RNG state draws the same masks (what a checkpoint's RNG state restores)."""
    layer = carousel.LSTM(IN, H, num_layers=2, **ALL_RATES)
    x = torch.randn(T, B, IN)
    state = torch.get_rng_state()
    a, _ = layer(x)
    b, _ = layer(x)
    torch.set_rng_state(state)
    c, _ = layer(x)
    assert torch.equal(a, c) and not torch.equal(a, b)


# ----------------------------------------------------------------- eval mode
@pytest.mark.parametrize("name", ["lstm", "peephole", "gru", "rnn"])
def test_eval_mode_is_the_plain_cell_for_dropouts(name):
    family = carousel.CELLS[name].family
    rates = _options(family, {"recurrent_dropout": 0.5, "update_dropout": 0.5, "weight_drop": 0.5})
    torch.manual_seed(0)
    reg = carousel.make_layer(name, IN, H, num_layers=2, bidirectional=True, **rates).eval()
    plain = carousel.make_layer(name, IN, H, num_layers=2, bidirectional=True).eval()
    plain.load_state_dict(reg.state_dict())
    x = torch.randn(T, B, IN)
    state = torch.get_rng_state()
    a, b = reg(x), plain(x)
    assert torch.equal(torch.get_rng_state(), state)  # eval draws nothing
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_zoneout_eval_uses_the_expectation(backend):
    """By hand (Krueger et al.): s_t = r s_{t−1} + (1 − r) s̃_t, h_t likewise, r the rate."""
    rs, rh = 0.3, 0.6
    torch.manual_seed(0)
    dtype = torch.float64
    layer = carousel.LSTM(IN, H, zoneout_state=rs, zoneout_hidden=rh, backend=backend, dtype=dtype)
    ref = torch.nn.LSTMCell(IN, H, dtype=dtype)
    ref.load_state_dict({k[:-3]: v for k, v in layer.state_dict().items()})
    x = torch.randn(T, B, IN, dtype=dtype)
    got, (_h_n, c_n) = layer.eval()(x)
    h = c = torch.zeros(B, H, dtype=dtype)
    for t in range(T):
        h_new, c_new = ref(x[t], (h, c))  # the plain cell: h̃_t, s̃_t
        h, c = rh * h + (1 - rh) * h_new, rs * c + (1 - rs) * c_new
        torch.testing.assert_close(got[t], h, **TOL[dtype])
    torch.testing.assert_close(c_n[0], c, **TOL[dtype])


def test_zoneout_training_keeps_units():
    """A unit whose mask is 1 keeps its previous value exactly."""
    torch.manual_seed(0)
    layer = carousel.LSTM(IN, H, zoneout_state=0.5, zoneout_hidden=0.5)
    x = torch.randn(T, B, IN)
    torch.manual_seed(4)
    out, _ = layer(x)
    torch.manual_seed(4)
    (m,) = layer.layer_masks(x, 0)
    keep = m.zoneout_hidden[1:].bool()
    assert keep.any()
    assert torch.equal(out[1:][keep], out[:-1][keep])


# ----------------------------------------------------------------- layer normalisation
def _ln(v, gain, bias=None, eps=1e-5):
    mu = v.mean(-1, keepdim=True)
    var = ((v - mu) ** 2).mean(-1, keepdim=True)
    out = gain * (v - mu) / torch.sqrt(var + eps)
    return out if bias is None else out + bias


@pytest.mark.parametrize("backend", ["auto", "fused", "reference"])
def test_layer_norm_by_hand(backend):
    """Also through ``auto``: a call without masks (layer norm alone) must still reach a
    backend that runs layer norm, not one that serves only the plain cell."""
    dtype = torch.float64
    torch.manual_seed(0)
    layer = carousel.LSTM(IN, H, layer_norm=True, backend=backend, dtype=dtype)
    _move_layer_norm(layer)
    p = dict(layer.named_parameters())
    x = torch.randn(T, B, IN, dtype=dtype)
    got, (_h_n, c_n) = layer(x)
    h = c = torch.zeros(B, H, dtype=dtype)
    for t in range(T):
        a = (
            _ln(x[t] @ p["weight_ih_l0"].T, p["weight_ln_ih_l0"])
            + p["bias_ih_l0"]
            + _ln(h @ p["weight_hh_l0"].T, p["weight_ln_hh_l0"])
            + p["bias_hh_l0"]
        )
        i, f, g, o = a.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(_ln(c, p["weight_ln_c_l0"], p["bias_ln_c_l0"]))
        torch.testing.assert_close(got[t], h, **TOL[dtype])
    torch.testing.assert_close(c_n[0], c, **TOL[dtype])


def test_layer_norm_parameters_and_init():
    layer = carousel.LSTM(IN, H, layer_norm=True, bidirectional=True, variant="lstm1997")
    p = dict(layer.named_parameters())
    for sfx in ("_l0", "_l0_reverse"):
        assert torch.equal(p[f"weight_ln_ih{sfx}"], torch.ones(3 * H))
        assert torch.equal(p[f"weight_ln_hh{sfx}"], torch.ones(3 * H))
        assert torch.equal(p[f"weight_ln_c{sfx}"], torch.ones(H))
        assert torch.equal(p[f"bias_ln_c{sfx}"], torch.zeros(H))


def test_layer_norm_runs_fused_and_falls_back_without_the_kernel(monkeypatch):
    """auto runs layer norm on the fused kernel; a fused kernel that lacks it (its module's
    FEATURES) sends auto to the reference path and makes backend="fused" an error."""
    from carousel.kernels import lstm as lstm_kernel

    x = torch.randn(T, B, IN)
    cell = carousel.get_cell("lstm", layer_norm=True)
    assert select_backend("auto", cell, x, frozenset({"layer_norm"})).name == "fused"
    monkeypatch.setattr(lstm_kernel, "FEATURES", lstm_kernel.FEATURES - {"layer_norm"})
    assert select_backend("auto", cell, x, frozenset({"layer_norm"})).name == "reference"
    with pytest.raises(carousel.ArgumentError, match="cannot run layer_norm"):
        carousel.LSTM(IN, H, layer_norm=True, backend="fused")(x)
    torch.manual_seed(0)
    layer = carousel.LSTM(IN, H, layer_norm=True, zoneout_state=0.2)
    ref = carousel.LSTM(IN, H, layer_norm=True, zoneout_state=0.2, backend="reference")
    ref.load_state_dict(layer.state_dict())
    torch.manual_seed(1)
    a = layer(x)[0]
    torch.manual_seed(1)
    torch.testing.assert_close(a, ref(x)[0], rtol=0, atol=0)


# ----------------------------------------------------------------- validation, dispatch
@pytest.mark.parametrize("name", list(ALL_RATES))
@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, math.nan, "0.1", True, None])
def test_rates_are_validated(name, bad):
    with pytest.raises(carousel.ArgumentError, match=rf"{name} must be a number in \[0, 1\); got"):
        carousel.LSTM(IN, H, **{name: bad})


def test_other_validation():
    with pytest.raises(carousel.ArgumentError, match="layer_norm must be True or False; got 1"):
        carousel.get_cell("lstm", layer_norm=1)
    for name in (*LSTM_ONLY, "layer_norm"):
        with pytest.raises(carousel.ArgumentError, match=f"unknown gru option.*{name}"):
            carousel.GRU(IN, H, **{name: 0.1})
    with pytest.raises(carousel.ArgumentError, match="act in the layers"):
        carousel.LSTMCell(IN, H, zoneout_state=0.1)
    with pytest.raises(carousel.ArgumentError, match="act in the layers"):
        carousel.make_cell("lstm", IN, H, layer_norm=True)


def test_dispatch_skips_a_backend_without_the_features():
    """A kernel registered for the plain cell (as the native LSTM kernel) is not chosen for a
    call that carries masks or layer norm; it is for eval mode of a dropout-only cell."""
    seen = []

    def plain_run(cell, x, state, weights, lengths, reverse):
        seen.append(cell)
        return reference_sequence(cell, x, state, weights, lengths, reverse)

    carousel.register_backend(Backend("plain-only", plain_run, lambda cell, x: True))
    try:
        x = torch.randn(T, B, IN)
        layer = carousel.LSTM(IN, H, recurrent_dropout=0.3, zoneout_hidden=0.2)
        layer(x)
        assert not seen  # training: masks; the fused kernel ran them
        layer.eval()(x)
        assert not seen  # eval with zoneout: its expectation is not the plain cell
        carousel.LSTM(IN, H, recurrent_dropout=0.3, weight_drop=0.5).eval()(x)
        assert len(seen) == 1  # eval of a dropout-only cell is the plain cell
        carousel.LSTM(IN, H, weight_drop=0.5)(x)
        assert len(seen) == 2  # DropConnect masks the weight before any backend
        carousel.LSTM(IN, H, layer_norm=True).eval()(x)
        assert len(seen) == 2
    finally:
        BACKENDS.pop("plain-only")


def test_weight_drop_one_mask_per_call():
    """DropConnect: W_hh ⊙ M, one mask for every step and sequence of a call; gradients
    reach W_hh through the mask."""
    torch.manual_seed(0)
    layer = carousel.RNN(IN, H, weight_drop=0.5, backend="fused", dtype=torch.float64)
    x = torch.randn(T, B, IN, dtype=torch.float64)
    torch.manual_seed(3)
    out, _ = layer(x)
    torch.manual_seed(3)
    w = layer._call_weights(0)
    mask = w.w_hh.detach() / layer.weight_hh_l0.detach()
    assert set(mask.round(decimals=6).unique().tolist()) <= {0.0, 2.0}
    h = torch.zeros(B, H, dtype=torch.float64)
    for t in range(T):
        h = torch.tanh(
            F.linear(x[t], layer.weight_ih_l0, layer.bias_ih_l0)
            + F.linear(h, w.w_hh, layer.bias_hh_l0)
        )
        torch.testing.assert_close(out[t], h, **TOL[torch.float64])
    out.sum().backward()
    dead = mask == 0
    assert (
        torch.all(layer.weight_hh_l0.grad[dead] == 0)
        and layer.weight_hh_l0.grad[~dead].abs().sum() > 0
    )


def test_onnx_refuses_only_what_changes_eval():
    from carousel.onnx_export import export_layers

    x = torch.randn(T, B, IN)
    for kw in ({"zoneout_state": 0.1}, {"zoneout_hidden": 0.1}, {"layer_norm": True}):
        layer = carousel.LSTM(IN, H, **kw).eval()
        state = layer._prepare_state(None, x, False)
        with pytest.raises(carousel.ArgumentError, match="ONNX export of a cell with"):
            export_layers(layer, x, state, None)


def test_record_with_zoneout_matches_eval_layer():
    from carousel.inspection import record

    torch.manual_seed(0)
    layer = carousel.LSTM(IN, H, num_layers=2, zoneout_state=0.4, zoneout_hidden=0.2)
    x = torch.randn(T, B, IN)
    rec = record(layer, x)
    out, _ = layer.eval()(x)
    torch.testing.assert_close(rec.output, out)


def test_vmap_with_masks_folds_them_with_the_batch():
    """torch.func.vmap over sequences: one fused call for all copies, every copy with the
    masks of the one draw (randomness="same"), as a loop with the same seed gives."""
    torch.manual_seed(0)
    dtype = torch.float64
    layer = carousel.LSTM(IN, H, dtype=dtype, **ALL_RATES)
    seqs = torch.randn(3, T, IN, dtype=dtype)

    def f(s):
        torch.manual_seed(2)
        return layer(s)[0]

    got = torch.func.vmap(f, randomness="same")(seqs)
    for v in range(3):
        torch.testing.assert_close(got[v], f(seqs[v]), **TOL[dtype])
