"""carousel as a drop-in for torch.nn: the checks PyTorch runs on its own RNN modules, run on
carousel's classes.

Part 1 drives carousel's classes through torch's own ``ModuleInfo`` entries (shipped in the
wheel, ``torch/testing/_internal/common_modules.py``): every forward input and error input
torch defines for ``nn.RNN/GRU/LSTM/RNNCell/GRUCell/LSTMCell``, with the kinds of checks of
PyTorch's ``test/test_modules.py`` (forward against the reference function and against
torch.nn with the same weights, gradcheck, gradgradcheck, non-contiguous inputs, factory
keywords, save/load, dtype moves, error types and messages).

Part 2 ports the RNN tests of PyTorch's ``test/test_nn.py`` (written anew here against
carousel's classes): argument checks, initial states, zero-size batches, T = 0, dropout,
``nonlinearity``, ``proj_size`` on RNN/GRU, weight norm and parametrizations through
``_flat_weights``, cells.

"""

from __future__ import annotations

import copy
import io
import itertools
import re
import warnings

import pytest
import torch
from torch import Tensor
from torch.func import functional_call
from torch.utils._pytree import tree_flatten, tree_unflatten

import carousel

pytest.importorskip("expecttest", reason="torch's ModuleInfo entries need expecttest (dev extra)")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torch.testing._internal import common_modules as cm

CAROUSEL = {
    "RNN": carousel.RNN,
    "GRU": carousel.GRU,
    "LSTM": carousel.LSTM,
    "RNNCell": carousel.RNNCell,
    "GRUCell": carousel.GRUCell,
    "LSTMCell": carousel.LSTMCell,
}
INFOS = {
    info.module_cls.__name__: info
    for info in cm.module_db
    if info.module_cls.__module__.startswith("torch.nn") and info.module_cls.__name__ in CAROUSEL
}
DTYPE = torch.float64


def _samples(name: str, requires_grad: bool = True) -> list:
    info = INFOS[name]
    return info.module_inputs_func(
        info, device="cpu", dtype=DTYPE, requires_grad=requires_grad, training=True
    )


def _sample_params():
    """(name, index, strip_proj): every ModuleInfo sample; LSTM samples with proj_size=0 once
    as torch gives them and once without the keyword."""
    params = []
    for name in CAROUSEL:
        for i, sample in enumerate(_samples(name)):
            kwargs = sample.constructor_input.kwargs
            cid = "-".join(f"{k}={v}" for k, v in kwargs.items()) or sample.desc or "default"
            params.append(pytest.param(name, i, False, id=f"{name}-{i}-{cid}"))
            if kwargs.get("proj_size") == 0:
                params.append(pytest.param(name, i, True, id=f"{name}-{i}-no-proj_size-kwarg"))
    return params


SAMPLES = _sample_params()


def _build(name: str, index: int, strip_proj: bool, requires_grad: bool = True):
    """carousel's module for the sample (float64), and the sample's forward args/kwargs."""
    sample = _samples(name, requires_grad)[index]
    ctor = sample.constructor_input
    kwargs = dict(ctor.kwargs)
    if strip_proj:
        kwargs.pop("proj_size")
    m = CAROUSEL[name](*ctor.args, **kwargs).to(DTYPE)
    return m, sample, kwargs


def _flat_tensors(out) -> list[Tensor]:
    return [t for t in tree_flatten(out)[0] if isinstance(t, Tensor)]


def _assert_same(a, b, **tol) -> None:
    fa, fb = _flat_tensors(a), _flat_tensors(b)
    assert len(fa) == len(fb)
    for x, y in zip(fa, fb):
        torch.testing.assert_close(x, y, **tol)


def _differentiable(m, args, kwargs):
    """``f(*inputs, *params)`` over the tensor leaves of the forward arguments that require
    grad, and those leaves followed by the parameters."""
    flat, spec = tree_flatten((args, kwargs))
    idx = [i for i, t in enumerate(flat) if isinstance(t, Tensor) and t.requires_grad]
    names = [n for n, _ in m.named_parameters()]
    params = [p for _, p in m.named_parameters()]

    def f(*xs):
        leaves = list(flat)
        for i, x in zip(idx, xs):
            leaves[i] = x
        a, k = tree_unflatten(leaves, spec)
        return tuple(_flat_tensors(functional_call(m, dict(zip(names, xs[len(idx) :])), a, k)))

    return f, (*(flat[i] for i in idx), *params)


# ---------------------------------------------------------------- part 1: ModuleInfo
@pytest.mark.parametrize(("name", "index", "strip_proj"), SAMPLES)
def test_module_forward(name, index, strip_proj):
    """Forward equals torch's reference function (unbatched = batch of one) and torch.nn's
    module holding the same weights; state dicts move both ways."""
    m, sample, kwargs = _build(name, index, strip_proj)
    args, fkw = sample.forward_input.args, sample.forward_input.kwargs
    out = m(*args, **fkw)
    if sample.reference_fn is not None:
        _assert_same(out, sample.reference_fn(m, *args, **fkw))
    ref = INFOS[name].module_cls(*sample.constructor_input.args, **kwargs).to(DTYPE)
    m.load_state_dict(ref.state_dict())
    _assert_same(m(*args, **fkw), ref(*args, **fkw), rtol=1e-12, atol=1e-12)
    ref.load_state_dict(m.state_dict())


@pytest.mark.parametrize(("name", "index", "strip_proj"), SAMPLES)
def test_module_grad(name, index, strip_proj):
    m, sample, _ = _build(name, index, strip_proj)
    f, inputs = _differentiable(m, sample.forward_input.args, sample.forward_input.kwargs)
    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)


def _gradgrad_subset():
    """Second derivatives are slow to check: the cells' samples, and of the layers' those
    with biases, time-major and one direction (every nonlinearity and initial state; two
    directions: test_rnn_gradgrad_reference_backend)."""
    keep = []
    for p in SAMPLES:
        name, index, _ = p.values
        kwargs = _samples(name)[index].constructor_input.kwargs
        layer = kwargs.get("bias") and not kwargs.get("batch_first")
        if name.endswith("Cell") or (layer and not kwargs.get("bidirectional")):
            keep.append(p)
    return keep


@pytest.mark.parametrize(("name", "index", "strip_proj"), _gradgrad_subset())
def test_module_gradgrad(name, index, strip_proj):
    """gradgradcheck; the layers run their fused kernels (CPU float64), whose second
    derivatives come from the reference twin (kernels/common.py)."""
    m, sample, _ = _build(name, index, strip_proj)
    f, inputs = _differentiable(m, sample.forward_input.args, sample.forward_input.kwargs)
    assert torch.autograd.gradgradcheck(f, inputs, fast_mode=True)


def _noncontiguous(t):
    if not isinstance(t, Tensor):
        return t
    nc = torch.stack([torch.zeros_like(t), t.detach()], dim=-1).select(-1, 1)
    assert not nc.is_contiguous() or t.numel() <= 1
    return nc.requires_grad_(t.requires_grad)


@pytest.mark.parametrize(("name", "index", "strip_proj"), SAMPLES)
def test_module_non_contiguous_tensors(name, index, strip_proj):
    m, sample, _ = _build(name, index, strip_proj)
    args, fkw = sample.forward_input.args, sample.forward_input.kwargs
    flat, spec = tree_flatten((args, fkw))
    nc_args, nc_kw = tree_unflatten([_noncontiguous(t) for t in flat], spec)
    out, out_nc = m(*args, **fkw), m(*nc_args, **nc_kw)
    _assert_same(out_nc, out)
    leaves = [t for t in flat if isinstance(t, Tensor) and t.requires_grad]
    nc_leaves = [t for t in tree_flatten((nc_args, nc_kw))[0] if isinstance(t, Tensor)]
    nc_leaves = [t for t in nc_leaves if t.requires_grad]
    g = torch.autograd.grad(sum(o.sum() for o in _flat_tensors(out)), [*leaves, *m.parameters()])
    g_nc = torch.autograd.grad(
        sum(o.sum() for o in _flat_tensors(out_nc)), [*nc_leaves, *m.parameters()]
    )
    _assert_same(g_nc, g)


@pytest.mark.parametrize(("name", "index", "strip_proj"), SAMPLES)
def test_module_factory_kwargs(name, index, strip_proj):
    """``dtype=`` / ``device=`` as torch.nn: parameters made there, also on the meta device
    and inside a ``torch.device`` context."""
    sample = _samples(name)[index]
    ctor = sample.constructor_input
    kwargs = dict(ctor.kwargs)
    if strip_proj:
        kwargs.pop("proj_size")
    cls = CAROUSEL[name]
    m = cls(*ctor.args, **kwargs, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in m.parameters())
    m = cls(*ctor.args, **kwargs, device="meta")
    assert all(p.device.type == "meta" for p in m.parameters())
    with torch.device("meta"):
        m = cls(*ctor.args, **kwargs)
    assert all(p.device.type == "meta" for p in m.parameters())
    m = m.to_empty(device="cpu")
    assert all(p.device.type == "cpu" for p in m.parameters())


@pytest.mark.parametrize(("name", "index", "strip_proj"), SAMPLES)
def test_module_save_load_and_repr(name, index, strip_proj):
    m, sample, kwargs = _build(name, index, strip_proj)
    args, fkw = sample.forward_input.args, sample.forward_input.kwargs
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    fresh = CAROUSEL[name](*sample.constructor_input.args, **kwargs).to(DTYPE)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    _assert_same(fresh(*args, **fkw), m(*args, **fkw), rtol=0, atol=0)
    _assert_same(copy.deepcopy(m)(*args, **fkw), m(*args, **fkw), rtol=0, atol=0)
    assert repr(m).startswith(type(m).__name__) and str(m)


@pytest.mark.parametrize(("name", "index", "strip_proj"), SAMPLES)
def test_module_to(name, index, strip_proj):
    """``.float()`` / ``.to(float64)`` keep the parameters' identities and move their data."""
    m, sample, _ = _build(name, index, strip_proj, requires_grad=False)
    before = list(m.parameters())
    m.float()
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert all(a is b for a, b in zip(before, m.parameters()))
    args = tree_unflatten(
        [
            t.float() if isinstance(t, Tensor) else t
            for t in tree_flatten(sample.forward_input.args)[0]
        ],
        tree_flatten(sample.forward_input.args)[1],
    )
    assert all(t.dtype == torch.float32 for t in _flat_tensors(m(*args)))
    m.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in m.parameters())


def _error_params():
    params = []
    for name in CAROUSEL:
        info = INFOS[name]
        errors = info.module_error_inputs_func(
            info, device="cpu", dtype=DTYPE, requires_grad=False, training=True
        )
        for i, e in enumerate(errors):
            params.append(pytest.param(name, i, id=f"{name}-{i}-{e.error_type.__name__}"))
    return params


@pytest.mark.parametrize(("name", "index"), _error_params())
def test_module_errors(name, index):
    """torch's error inputs raise an instance of torch's exception type, matching its regex."""
    info = INFOS[name]
    e = info.module_error_inputs_func(
        info, device="cpu", dtype=DTYPE, requires_grad=False, training=True
    )[index]
    sample = e.module_error_input
    ctor = sample.constructor_input
    if e.error_on == cm.ModuleErrorEnum.CONSTRUCTION_ERROR:
        with pytest.raises(e.error_type, match=e.error_regex):
            CAROUSEL[name](*ctor.args, **ctor.kwargs)
        return
    m = CAROUSEL[name](*ctor.args, **ctor.kwargs)
    if "dtype" not in ctor.kwargs:
        m = m.to(DTYPE)
    with pytest.raises(e.error_type, match=e.error_regex):
        m(*sample.forward_input.args, **sample.forward_input.kwargs)


# ---------------------------------------------------------------- part 2: test_nn.py ports
LAYERS = {"RNN": carousel.RNN, "GRU": carousel.GRU, "LSTM": carousel.LSTM}


def _hidden(mode: str, h: Tensor, c: Tensor | None = None):
    return (h, h if c is None else c) if mode == "LSTM" else h


@pytest.mark.parametrize("mode", LAYERS)
def test_rnn_args_check(mode):
    """Every wrong input or state size is a RuntimeError, as in torch.nn."""
    I, H, L, B, T, bad = 3, 5, 2, 4, 6, 7
    good_x, good_h = (T, B, I), (L, B, H)

    def cases():
        yield (T, bad, I), good_h  # input batch
        yield good_x, (L, bad, H)  # hidden batch
        yield (T, B, bad), good_h  # input size
        yield good_x, (L, B, bad)  # hidden size
        yield good_x, (bad, B, H)  # layers·directions

    for x_shape, h_shape in cases():
        model = LAYERS[mode](I, H, L)
        x, h = torch.randn(x_shape), torch.randn(h_shape)
        hiddens = [_hidden(mode, h)]
        if mode == "LSTM" and h_shape != good_h:
            good = torch.randn(good_h)
            hiddens = [(h, good), (good, h)]
        for hx in hiddens:
            with pytest.raises(RuntimeError):
                model(x, hx)


def test_projections_lstm_args_check():
    I, H, P, L, B, T, bad = 3, 5, 2, 2, 4, 6, 7
    model = carousel.LSTM(I, H, L, proj_size=P)
    for x_shape, h_shape, c_shape in [
        ((T, bad, I), (L, B, P), (L, B, H)),
        ((T, B, I), (L, bad, P), (L, bad, H)),
        ((T, B, bad), (L, B, P), (L, B, H)),
        ((T, B, I), (L, B, bad), (L, B, bad)),
        ((T, B, I), (bad, B, P), (bad, B, H)),
        ((T, B, I), (L, B, H), (L, B, H)),  # h of hidden size, not proj size
        ((T, B, I), (L, B, P), (bad, B, H)),
    ]:
        with pytest.raises(RuntimeError):
            model(torch.randn(x_shape), (torch.randn(h_shape), torch.randn(c_shape)))


@pytest.mark.parametrize("mode", LAYERS)
def test_forward_exception_wording(mode):
    """torch's wording, which PyTorch's own tests match (test_cudnn_forward_exception)."""
    rnn = LAYERS[mode](10, 20, batch_first=True)
    wrong = torch.zeros(1, 2, 19)
    with pytest.raises(RuntimeError, match=r"Expected hidden.*size.*got"):
        rnn(torch.randn(2, 3, 10), _hidden(mode, wrong))
    with pytest.raises(RuntimeError, match=re.escape("input.size(-1) must be equal to input_size")):
        rnn(torch.randn(2, 3, 3))
    which = "hidden[0]" if mode == "LSTM" else "hidden"
    with pytest.raises(
        RuntimeError, match=re.escape(f"Expected {which} size (1, 2, 20), got [1, 3, 20]")
    ):
        LAYERS[mode](10, 20)(torch.randn(5, 2, 10), _hidden(mode, torch.zeros(1, 3, 20)))


def test_forward_exception_wording_projections():
    rnn = carousel.LSTM(10, 20, batch_first=True, proj_size=10)
    with pytest.raises(RuntimeError, match=r"Expected hidden.*size.*got"):
        rnn(torch.randn(2, 3, 10), (torch.zeros(1, 2, 19), torch.zeros(1, 2, 19)))


@pytest.mark.parametrize("mode", LAYERS)
def test_rnn_initial_hidden_state(mode):
    rnn = LAYERS[mode](30, 20, 2)
    x = torch.randn(10, 32, 30)
    out1, h1 = rnn(x, _hidden(mode, torch.zeros(2, 32, 20)))
    out2, h2 = rnn(x)
    _assert_same((out1, h1), (out2, h2))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_projections_lstm_initial_hidden_state(bidirectional):
    D = 2 if bidirectional else 1
    rnn = carousel.LSTM(30, 20, 2, bidirectional=bidirectional, proj_size=10)
    x = torch.randn(10, 32, 30)
    out1, h1 = rnn(x, (torch.zeros(2 * D, 32, 10), torch.zeros(2 * D, 32, 20)))
    out2, h2 = rnn(x)
    _assert_same((out1, h1), (out2, h2))


@pytest.mark.parametrize("mode", ["RNN", "GRU"])
def test_projections_errors_on_gru_and_rnn(mode):
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
        LAYERS[mode](30, 20, 2, proj_size=10)


@pytest.mark.parametrize(("mode", "bidirectional"), list(itertools.product(LAYERS, [True, False])))
def test_error_rnn_seq_len_zero(mode, bidirectional):
    rnn = LAYERS[mode](5, 6, bidirectional=bidirectional).double()
    with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0 in RNN"):
        rnn(torch.ones(0, 10, 5, dtype=torch.float64))


@pytest.mark.parametrize(("mode", "bidirectional"), list(itertools.product(LAYERS, [False, True])))
def test_rnn_input_size_zero(mode, bidirectional):
    """A batch of no sequences gives outputs and states with a batch of 0, and backward runs."""
    rnn = LAYERS[mode](input_size=3, hidden_size=4, num_layers=2, bidirectional=bidirectional)
    out, h = rnn(torch.zeros(5, 0, 3))
    D = 2 if bidirectional else 1
    assert out.shape == (5, 0, 4 * D)
    assert all(s.shape == (2 * D, 0, 4) for s in _flat_tensors(h))
    out.sum().backward()
    out, _ = LAYERS[mode](3, 4, batch_first=True)(torch.zeros(0, 5, 3))
    assert out.shape == (0, 5, 4)


@pytest.mark.parametrize(
    ("p", "train"), list(itertools.product([0, 0.276, 0.731, 1], [True, False]))
)
def test_rnn_dropout(p, train):
    """Dropout acts between stacked layers only, scaled by 1/(1 − p), and not in eval."""
    rnn = carousel.RNN(10, 1000, 2, bias=False, dropout=p, nonlinearity="relu").double()
    rnn.train(train)
    with torch.no_grad():
        for w in rnn.parameters():
            w.fill_(1)
    out, hy = rnn(torch.ones(1, 1, 10, dtype=torch.float64), torch.zeros(2, 1, 1000).double())
    assert out.min() == out.max()
    value = out[0, 0, 0].item()
    if p == 0 or not train:
        assert value == 10000
    elif p == 1:
        assert value == 0
    else:
        assert 8000 < value < 12000
        denorm = (value * (1 - p)) % 10
        assert min(denorm, 10 - denorm) < 1e-2
    assert hy[0].min() == hy[0].max() and hy[1].min() == hy[1].max()
    assert hy[0, 0, 0].item() == 10 and hy[1, 0, 0].item() == value


@pytest.mark.parametrize(("p", "train"), list(itertools.product([0, 0.1234], [True, False])))
def test_rnn_dropout_state(p, train):
    rnn = carousel.RNN(100, 100, 2, bias=False, dropout=p, nonlinearity="relu").double()
    rnn.train(train)
    x, hx = torch.rand(1, 1, 100).double(), torch.rand(2, 1, 100).double()
    out1, hy1 = rnn(x, hx)
    out2, hy2 = rnn(x, hx)
    buf = io.BytesIO()
    torch.save(rnn, buf)  # a whole-module pickle, as the torch test does (test-only)
    buf.seek(0)
    rnn2 = torch.load(buf, weights_only=False)
    rnn2.flatten_parameters()
    out3, hy3 = rnn2(x, hx)
    if p == 0 or not train:
        _assert_same((out1, hy1), (out2, hy2))
        _assert_same((out1, hy1), (out3, hy3))
    else:
        assert not torch.equal(out1, out2) and not torch.equal(out1, out3)
        assert not torch.equal(hy1, hy2) and not torch.equal(hy1, hy3)


@pytest.mark.parametrize("train", [True, False])
def test_rnn_change_dropout(train):
    rnn = carousel.RNN(100, 100, 2, dropout=0, nonlinearity="relu").double()
    rnn.train(train)
    x = torch.rand(3, 2, 100).double()
    prev = None
    for p in (0, 0.5, 0, 0.7, 0.2, 1, 0.2, 0):
        rnn.dropout = p
        out1, hy1 = rnn(x)
        out2, hy2 = rnn(x)
        if p in (0, 1) or not train:
            _assert_same((out1, hy1), (out2, hy2))
        else:
            assert not torch.equal(out1, out2) and not torch.equal(hy1, hy2)
        if prev is not None:
            assert torch.equal(out1, prev) == (not train)
            assert torch.equal(out2, prev) == (not train)
        prev = out1


def test_rnn_nonlinearity():
    assert carousel.RNN(1, 10).nonlinearity == "tanh"
    assert carousel.RNN(1, 10, nonlinearity="relu").nonlinearity == "relu"
    rnn = carousel.RNN(1, 10, 1, "relu")  # passed positionally, as torch.nn allows
    assert rnn.nonlinearity == "relu"
    assert rnn.cell.nonlinearity == "relu"
    with pytest.raises(ValueError, match="nonlinearity"):
        carousel.RNN(1, 10, nonlinearity="garbage")


def _check_weight_norm(layer, name: str, num_params: int) -> None:
    """torch's test_rnn_weight_norm: the reparametrised weight leaves ``_flat_weights``'s
    Parameters and comes back on removal; the output does not change."""
    x = torch.randn(5, 2, layer.input_size)
    expected = layer(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch prefers parametrizations now
        layer = torch.nn.utils.weight_norm(layer, name=name)
    params = sum(isinstance(p, torch.nn.Parameter) for p in layer._flat_weights)
    assert params == num_params - 1
    _assert_same(layer(x), expected)
    layer(x)[0].sum().backward()
    assert layer.__getattr__(name + "_v").grad is not None
    layer = torch.nn.utils.remove_weight_norm(layer, name=name)
    assert sum(isinstance(p, torch.nn.Parameter) for p in layer._flat_weights) == num_params
    assert layer._parameters[name] is not None and name in dict(layer.named_parameters())
    assert name + "_v" not in layer._parameters and name + "_g" not in layer._parameters
    _assert_same(layer(x), expected)


@pytest.mark.parametrize("mode", LAYERS)
def test_rnn_weight_norm(mode):
    _check_weight_norm(LAYERS[mode](32, 32), "weight_ih_l0", 4)
    _check_weight_norm(LAYERS[mode](8, 8, num_layers=2, bidirectional=True), "weight_hh_l1", 16)


def test_rnn_weight_norm_peepholes():
    _check_weight_norm(carousel.LSTM(8, 8, variant="peephole"), "weight_hh_l0", 7)


def test_rnn_weight_norm_projections():
    _check_weight_norm(carousel.LSTM(32, 32, proj_size=16), "weight_hr_l0", 5)


def test_flat_weights_names_as_torch():
    for kw in ({}, {"num_layers": 2, "bidirectional": True}, {"bias": False}):
        ref, ours = torch.nn.LSTM(3, 4, **kw), carousel.LSTM(3, 4, **kw)
        assert ours._flat_weights_names == ref._flat_weights_names
        assert ours._all_weights == ref._all_weights
        assert [w.shape for w in ours._flat_weights] == [w.shape for w in ref._flat_weights]
        assert [[w.shape for w in ws] for ws in ours.all_weights] == [
            [w.shape for w in ws] for ws in ref.all_weights
        ]


@pytest.mark.parametrize("mode", LAYERS)
def test_parametrizations_on_a_layer(mode):
    """``torch.nn.utils.parametrizations`` (weight_norm, orthogonal) and pruning on carousel
    layers: forward uses the parametrised weights, gradients reach the originals."""
    from torch.nn.utils import parametrizations, parametrize, prune

    torch.manual_seed(0)
    layer = LAYERS[mode](4, 5, num_layers=2).double()
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    expected, _ = layer(x)
    parametrizations.weight_norm(layer, "weight_hh_l0")
    assert parametrize.is_parametrized(layer, "weight_hh_l0")
    out, _ = layer(x)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert layer.parametrizations.weight_hh_l0.original0.grad is not None
    parametrizations.orthogonal(layer, "weight_ih_l1")
    q = layer.weight_ih_l1  # (G·H, H): orthonormal columns
    torch.testing.assert_close(q.T @ q, torch.eye(q.size(1), dtype=q.dtype))
    ref = {"RNN": torch.nn.RNN, "GRU": torch.nn.GRU, "LSTM": torch.nn.LSTM}[mode](4, 5, 2).double()
    with torch.no_grad():  # the same effective weights in torch.nn give the same output
        for n in ref._flat_weights_names:
            getattr(ref, n).copy_(getattr(layer, n))
    torch.testing.assert_close(layer(x)[0], ref(x)[0])
    parametrize.remove_parametrizations(layer, "weight_ih_l1")
    assert isinstance(layer.weight_ih_l1, torch.nn.Parameter)

    pruned = LAYERS[mode](4, 5)
    prune.l1_unstructured(pruned, "weight_hh_l0", amount=0.5)
    w = pruned.weight_hh_l0
    assert (w == 0).sum() == round(0.5 * w.numel())
    assert sum(isinstance(p, torch.nn.Parameter) for p in pruned._flat_weights) == 3
    pruned(torch.randn(3, 2, 4))[0].sum().backward()
    assert pruned.weight_hh_l0_orig.grad is not None


@pytest.mark.parametrize("mode", LAYERS)
def test_rnn_retain_variables(mode):
    rnn = LAYERS[mode](10, 20, num_layers=2).double()
    x = torch.randn(5, 6, 10, dtype=torch.float64, requires_grad=True)
    out = rnn(x)
    out[0].sum().backward(retain_graph=True)
    grads = [x.grad.clone(), *(p.grad.clone() for p in rnn.parameters())]
    for _ in range(3):
        rnn.zero_grad()
        x.grad = None
        out[0].sum().backward(retain_graph=True)
        _assert_same([x.grad, *(p.grad for p in rnn.parameters())], grads)


def _gradcheck_layer(mode: str, **kw):
    rnn = LAYERS[mode](2, 2, num_layers=2, bidirectional=True, **kw).double()
    x = torch.randn(3, 1, 2, dtype=torch.float64, requires_grad=True)
    n = 2 if mode == "LSTM" else 1
    hx = [torch.randn(4, 1, 2, dtype=torch.float64, requires_grad=True) for _ in range(n)]
    f, inputs = _differentiable(rnn, (x, tuple(hx) if n == 2 else hx[0]), {})
    return f, inputs


@pytest.mark.parametrize("mode", LAYERS)
def test_rnn_grad(mode):
    """test_LSTM_grad_and_gradgrad / test_GRU_grad_and_gradgrad, the first derivative."""
    f, inputs = _gradcheck_layer(mode)
    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)


@pytest.mark.parametrize("mode", LAYERS)
def test_rnn_gradgrad(mode):
    """Second derivatives through the fused kernels (CPU float64 picks them)."""
    rnn = LAYERS[mode](2, 2).double()
    x = torch.randn(3, 1, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: rnn(x)[0], (x,), fast_mode=True)


@pytest.mark.parametrize("mode", LAYERS)
def test_rnn_gradgrad_reference_backend(mode):
    f, inputs = _gradcheck_layer(mode, backend="reference")
    assert torch.autograd.gradgradcheck(f, inputs, fast_mode=True)


@pytest.mark.parametrize("mode", LAYERS)
def test_variable_sequence(mode):
    """A packed batch gives each sequence the output and final state it has alone."""
    torch.manual_seed(0)
    lengths = [10, 10, 6, 2, 2, 1, 1]
    rnn = LAYERS[mode](3, 4, num_layers=2, bidirectional=True).double()
    x = torch.randn(10, len(lengths), 3, dtype=torch.float64)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths)
    out, h = rnn(packed)
    padded, _ = torch.nn.utils.rnn.pad_packed_sequence(out)
    for b, n in enumerate(lengths):
        alone, h_alone = rnn(x[:n, b : b + 1])
        torch.testing.assert_close(padded[:n, b : b + 1], alone)
        assert torch.all(padded[n:, b] == 0)
        for s, s_alone in zip(_flat_tensors(h), _flat_tensors(h_alone)):
            torch.testing.assert_close(s[:, b : b + 1], s_alone)


CELLS = {"RNNCell": carousel.RNNCell, "GRUCell": carousel.GRUCell}


@pytest.mark.parametrize(("cls", "bias"), list(itertools.product(CELLS.values(), [True, False])))
def test_rnn_cell(cls, bias):
    x, hx = torch.randn(3, 10), torch.randn(3, 20)
    cell = cls(10, 20, bias=bias)
    for _ in range(6):
        hx = cell(x, hx)
    hx.sum().backward()
    assert cell.weight_hh.grad is not None


@pytest.mark.parametrize("bias", [True, False])
def test_lstm_cell(bias):
    x, hx, cx = torch.randn(3, 10), torch.randn(3, 20), torch.randn(3, 20)
    lstm = carousel.LSTMCell(10, 20, bias=bias)
    for _ in range(6):
        hx, cx = lstm(x, (hx, cx))
    (hx + cx).sum().backward()


def test_rnn_cell_forward_zero_hidden_size():
    x, hx = torch.randn(3, 10), torch.randn(3, 0)
    for cell in (
        carousel.RNNCell(10, 0, nonlinearity="relu"),
        carousel.RNNCell(10, 0, nonlinearity="tanh"),
        carousel.GRUCell(10, 0),
    ):
        assert cell(x, hx).shape == (3, 0)


def test_rnn_cell_no_broadcasting():
    I, H = 10, 20
    x, good = torch.randn(3, I), torch.randn(3, H)

    def check(bad_hx, x=x):
        for cls in CELLS.values():
            with pytest.raises(RuntimeError):
                cls(I, H)(x, bad_hx)
        for hx in ((bad_hx, good), (good, bad_hx)):
            with pytest.raises(RuntimeError):
                carousel.LSTMCell(I, H)(x, hx)

    check(torch.randn(1, H))  # hidden batch of 1 is not broadcast
    check(torch.randn(3, 1))  # hidden size of 1 is not broadcast
    for cls in CELLS.values():  # input size of 1 is not broadcast
        with pytest.raises(RuntimeError):
            cls(I, H)(torch.randn(3, 1), good)


def test_lstm_cell_forward_sizes():
    lstm = carousel.LSTMCell(10, 20)
    with pytest.raises(RuntimeError):
        lstm(torch.randn(3, 11), (torch.randn(3, 20), torch.randn(3, 20)))
    hx, cx = torch.randn(3, 21), torch.randn(3, 20)
    for state in ((hx, cx), (cx, hx)):
        with pytest.raises(RuntimeError):
            lstm(torch.randn(3, 10), state)


def test_lstmcell_backward_only_one_output_grad():
    """Backward from h' alone or c' alone (the other output's gradient is None)."""
    cell = carousel.LSTMCell(2, 3).double()
    x = torch.randn(1, 2, dtype=torch.float64, requires_grad=True)
    for i in range(2):
        cell(x)[i].sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        x.grad = None
