"""The native LSTM-family kernel (``backend="native"``) against the reference twin.

Every registered LSTM variant × {uni, bi} × {1, 2 layers} × {equal, ragged lengths}, in
float64 (to 1e-10) and float32, at a tiny size (one partial block of units) and at sizes that
cut the hidden units into several blocks shared between two threads, with row tails; gradcheck
in float64 for every variant; the panel cache; what goes to the numba kernels (a projection,
bfloat16 autocast) and the fallback to them when the library cannot load.  The autograd is the
kernels' shared one (kernels/common.py): test_higher_order.py and test_func.py run their
second-derivative and torch.func checks on the native kernel too.  Tests of the kernel itself
skip when it is not built (``make install`` builds it) or is disabled (``CAROUSEL_NATIVE=0``);
the fallback tests run either way.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import carousel
from carousel.backends import BACKENDS, LayerWeights, select_backend
from carousel.kernels import common, native

built = pytest.mark.skipif(
    not native.available(),
    reason=f"the native kernels do not load here ({native.failure()}; make install builds them)",
)
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-12}, torch.float32: {"rtol": 2e-5, "atol": 5e-6}}
T, IN = 5, 3


def _run(layer, x, hx, lengths, weights):
    """Outputs, final states and the gradients of a loss that touches all of them."""
    y, (h, c) = layer(x, hx, lengths=lengths)
    loss = (y * weights[0]).sum() + (h * weights[1]).sum() + (c * weights[2]).sum()
    grads = torch.autograd.grad(loss, [x, *hx, *layer.parameters()])
    return (y, h, c, *grads)


def _check(name, dtype, bidirectional, num_layers, ragged, H=4, B=4):
    torch.manual_seed(1)
    kw = {"num_layers": num_layers, "bidirectional": bidirectional, "dtype": dtype}
    ref = carousel.make_layer(name, IN, H, backend="reference", **kw)
    nat = carousel.make_layer(name, IN, H, backend="native", **kw)
    nat.load_state_dict(ref.state_dict())
    D = 2 if bidirectional else 1
    g = torch.Generator().manual_seed(2)
    x = torch.randn(T, B, IN, dtype=dtype, generator=g).requires_grad_()
    lengths = torch.tensor([T, 2, T - 1, 1, 3, T, 2] * (B // 7 + 1))[:B] if ragged else None
    hx = tuple(
        torch.randn(num_layers * D, B, H, dtype=dtype, generator=g).requires_grad_()
        for _ in range(2)
    )
    weights = [torch.randn(T, B, D * H, dtype=dtype, generator=g)] + [
        torch.randn(num_layers * D, B, H, dtype=dtype, generator=g) for _ in range(2)
    ]
    expected = _run(ref, x, hx, lengths, weights)
    got = _run(nat, x, hx, lengths, weights)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **TOL[dtype])


@built
@pytest.mark.parametrize("ragged", [False, True], ids=["equal", "ragged"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("name", carousel.LSTM_VARIANTS)
def test_native_matches_reference_float64(name, bidirectional, num_layers, ragged):
    _check(name, torch.float64, bidirectional, num_layers, ragged)


@built
@pytest.mark.parametrize(("H", "B"), [(20, 40), (40, 41), (136, 1)], ids=lambda v: str(v))
@pytest.mark.parametrize("ragged", [False, True], ids=["equal", "ragged"])
@pytest.mark.parametrize("name", carousel.LSTM_VARIANTS)
def test_native_blocks_threads_and_row_tails(name, ragged, H, B):
    """Several blocks of units split between two threads (from 65,536 multiply-adds a step),
    one or an odd number of rows, a partial last block."""
    _check(name, torch.float64, True, 1, ragged, H=H, B=B)


@built
@pytest.mark.parametrize("ragged", [False, True], ids=["equal", "ragged"])
@pytest.mark.parametrize("name", carousel.LSTM_VARIANTS)
def test_native_matches_reference_float32(name, ragged):
    """float32 runs the vectorised exp/tanh (about 1 ulp) instead of libm."""
    _check(name, torch.float32, True, 2, ragged, H=20, B=5)


@built
@pytest.mark.parametrize(
    "kw",
    [
        {"bias": False},
        {"input_activation": "sigmoid"},
        {"output_gate": False, "output_activation": "identity"},
        {"input_gate": False, "forget_gate": False},
    ],
    ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()),
)
def test_native_other_switches(kw):
    name = "lstm1997" if "forget_gate" in kw else "peephole"
    torch.manual_seed(1)
    ref = carousel.make_layer(name, IN, 12, backend="reference", dtype=torch.float64, **kw)
    nat = carousel.make_layer(name, IN, 12, backend="native", dtype=torch.float64, **kw)
    nat.load_state_dict(ref.state_dict())
    x = torch.randn(T, 3, IN, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([T, 2, 4])
    for layer in (ref, nat):
        y, (h, c) = layer(x, lengths=lengths)
        layer.result = (
            y,
            h,
            c,
            *torch.autograd.grad(y.sin().sum() + c.sum(), [x, *layer.parameters()]),
        )
    for a, b in zip(nat.result, ref.result):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@built
@pytest.mark.parametrize("name", carousel.LSTM_VARIANTS)
def test_gradcheck_native(name):
    """H = 9: a full block of units and a one-lane partial one (AVX2; one partial block with
    AVX-512).  Every entry of the Jacobian for lstm and peephole; the other variants in
    gradcheck's fast mode (a random projection: thousands of tiny calls are slow here)."""
    torch.manual_seed(3)
    H = 9
    layer = carousel.make_layer(name, 2, H, backend="native", dtype=torch.float64)
    cell = layer.cell
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    states = tuple(torch.randn(3, H, dtype=torch.float64, requires_grad=True) for _ in range(2))
    lengths = torch.tensor([4, 2, 3])
    for reverse in (False, True):
        w = layer.layer_weights(0)
        params = (w.w_ih, w.w_hh, w.b_ih, w.b_hh, *w.peep.values())

        def fn(x, *args, reverse=reverse, w=w):
            state = args[:2]
            w_ih, w_hh, b_ih, b_hh, *peep = args[2:]
            lw = LayerWeights(w_ih, w_hh, b_ih, b_hh, dict(zip(w.peep, peep)))
            out, final = BACKENDS["native"].run(cell, x, state, lw, lengths, reverse)
            return (out, *final)

        inputs = (x, *states, *(p.detach().clone().requires_grad_() for p in params))
        assert torch.autograd.gradcheck(fn, inputs, fast_mode=name not in ("lstm", "peephole"))


@built
def test_auto_picks_native_for_lstm_only():
    x = torch.zeros(1)
    assert select_backend("auto", carousel.CELLS["lstm"], x).name == "native"
    assert select_backend("auto", carousel.CELLS["gru"], x).name == "fused"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # served by the numba kernels (below)
        assert select_backend("auto", carousel.CELLS["lstm"], x).name == "native"
    assert select_backend("auto", carousel.CELLS["lstm"], x.bfloat16()).name == "reference"


class _Kernels:
    """Records which kernel object each fused forward call ran."""

    def __init__(self, monkeypatch):
        self.ran = []
        forward = common._kernel_forward

        def recorded(call, flat):
            self.ran.append(type(call.kernel).__name__)
            return forward(call, flat)

        monkeypatch.setattr(common, "_kernel_forward", recorded)


@built
def test_the_native_kernel_runs_inside_the_shared_function(monkeypatch):
    """One SequenceFunction a direction, its kernel the native one; the gradient it returns
    with create_graph is SequenceBackward's (so a second derivative exists)."""
    ran = _Kernels(monkeypatch)
    layer = carousel.LSTM(3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3, requires_grad=True)
    y, _ = layer(x, lengths=[5, 3])
    assert ran.ran == ["NativeLSTMKernel"] * 4
    assert type(y.grad_fn).__name__ != "NativeLSTMFunctionBackward"
    (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    assert g.requires_grad


@built
@pytest.mark.parametrize("case", ["projection", "bf16", "zoneout", "layer_norm"])
def test_what_native_does_not_serve_goes_to_numba(case, monkeypatch):
    """proj_size and bfloat16 autocast: ``backend="native"`` (and so ``auto``) hands the layer
    to the numba kernel; the regularisers' masks and layer norm go there through ``auto``."""
    torch.manual_seed(0)
    kw = {
        "projection": {"proj_size": 3},
        "zoneout": {"zoneout_state": 0.3},
        "layer_norm": {"layer_norm": True},
    }.get(case, {})
    ran = _Kernels(monkeypatch)
    # masks and layer norm are features the native backend does not declare: auto picks the
    # numba kernel ("fused") for them itself, and backend="native" refuses them
    backend = "auto" if case in ("zoneout", "layer_norm") else "native"
    if backend == "auto":
        with pytest.raises(carousel.ArgumentError, match="cannot run"):
            carousel.LSTM(4, 6, backend="native", **kw)(torch.randn(2, 1, 4))
    nat = carousel.LSTM(4, 6, bidirectional=True, backend=backend, **kw)
    ref = carousel.LSTM(4, 6, bidirectional=True, backend="fused", **kw)
    ref.load_state_dict(nat.state_dict())
    x = torch.randn(5, 2, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "bf16"):
        torch.manual_seed(1)  # the same masks for both
        y1, _ = nat(x, lengths=[5, 3])
        assert ran.ran == ["LSTMKernel"] * 2
        torch.manual_seed(1)
        y2, _ = ref(x, lengths=[5, 3])
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    g1 = torch.autograd.grad(y1.sum(), [x, *nat.parameters()])
    g2 = torch.autograd.grad(y2.sum(), [x, *ref.parameters()])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@built
def test_without_numba_what_native_does_not_serve_runs_the_reference(monkeypatch):
    from carousel import kernels

    monkeypatch.setattr(kernels, "supports", lambda cell, x: False)
    ran = _Kernels(monkeypatch)
    nat = carousel.LSTM(4, 6, proj_size=3, backend="native")
    ref = carousel.LSTM(4, 6, proj_size=3, backend="reference")
    ref.load_state_dict(nat.state_dict())
    x = torch.randn(5, 2, 4)
    torch.testing.assert_close(nat(x)[0], ref(x)[0], rtol=0, atol=0)
    assert ran.ran == []


@built
def test_torchs_openmp_team_and_the_own_pool_agree_to_the_bit():
    """A call on torch's OpenMP team (the default where the library was built with -fopenmp)
    and the same call on the library's own pthread pool split the blocks alike, so outputs
    and every gradient are equal to the bit; and the library shares torch's libgomp rather
    than loading a second OpenMP runtime."""
    if not native.openmp():
        pytest.skip("the native library was built without OpenMP")
    with open("/proc/self/maps") as f:
        maps = [line.split()[-1] for line in f if "libgomp" in line]
    assert len(set(maps)) == 1, f"expected one libgomp in the process, found {set(maps)}"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        layer = carousel.LSTM(40, 40, bidirectional=True, dtype=torch.float64)  # 2 threads
        x = torch.randn(7, 41, 40, dtype=torch.float64, requires_grad=True)
        lengths = torch.randint(1, 8, (41,))
        runs = []
        for on in (True, False):
            native.set_openmp(on)
            packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
            y, (h, s) = layer(packed)
            loss = y.data.square().sum() + h.sum() + s.sum()
            grads = torch.autograd.grad(loss, [x, *layer.parameters()])
            runs.append((y.data, h, s, *grads))
    finally:
        native.set_openmp(True)
        torch.set_num_threads(threads)
    assert native.openmp()
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@built
def test_backward_is_reentrant():
    """Two backward passes through one graph give the same gradients (gradcheck's reentrancy
    check; the backward once reused the forward's packed panels and was not)."""
    layer = carousel.LSTM(3, 8, num_layers=2, bidirectional=True, dtype=torch.float64)
    assert select_backend("auto", layer.cell, torch.zeros(1, 1, 3, dtype=torch.float64)).name == (
        "native"
    )
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    y, _ = layer(x)
    params = [x, *layer.parameters()]
    first = torch.autograd.grad(y.sum(), params, retain_graph=True)
    second = torch.autograd.grad(y.sum(), params)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@built
def test_backward_after_an_in_place_change_is_refused():
    """autograd's version check refuses a backward after W_hh changed in place."""
    layer = carousel.LSTM(3, 8, backend="native")
    y, _ = layer(torch.randn(5, 3, 3, requires_grad=True))
    with torch.no_grad():
        layer.weight_hh_l0.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


@built
def test_panels_follow_the_weight():
    """Panels are packed per call, and inside frozen_weights cached per weight object and
    redone when it changes in place."""
    torch.manual_seed(0)
    layer = carousel.LSTM(6, 10, backend="native")
    ref = carousel.LSTM(6, 10, backend="reference")
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(4, 2, 6)
    with torch.no_grad():
        torch.testing.assert_close(layer(x)[0], ref(x)[0])
        for lay in (layer, ref):
            lay.weight_hh_l0.data.mul_(-1.5)  # .data: no version bump
        torch.testing.assert_close(layer(x)[0], ref(x)[0])
        with native.frozen_weights():
            torch.testing.assert_close(layer(x)[0], ref(x)[0])
            assert len(native._PANELS) == 1
            first = next(iter(native._PANELS.values()))[5]
            torch.testing.assert_close(layer(x)[0], ref(x)[0])
            assert next(iter(native._PANELS.values()))[5] is first  # reused
            for lay in (layer, ref):
                lay.weight_hh_l0.mul_(0.5)  # in place: the version moves
            torch.testing.assert_close(layer(x)[0], ref(x)[0])
        assert not native._PANELS


@built
def test_backward_twice_gives_the_same_gradients():
    layer = carousel.LSTM(3, 12, variant="peephole", bidirectional=True, backend="native")
    x = torch.randn(5, 2, 3, requires_grad=True)
    y, (_, c) = layer(x, lengths=[5, 3])
    loss = y.square().sum() + c.sum()
    first = torch.autograd.grad(loss, [x, *layer.parameters()], retain_graph=True)
    second = torch.autograd.grad(loss, [x, *layer.parameters()])
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_disabled_the_numba_kernels_serve_silently(monkeypatch):
    """``CAROUSEL_NATIVE=0`` (carousel.kernels.native.DISABLED): no warning, auto is numba."""
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_isa", None)
    monkeypatch.setattr(native, "_loaded", False)
    monkeypatch.setattr(native, "_failure", None)
    monkeypatch.setattr(native, "DISABLED", True)
    layer = carousel.LSTM(3, 4, variant="peephole")
    x = torch.randn(5, 2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, _ = layer(x)
    assert "CAROUSEL_NATIVE=0" in native.failure()
    assert select_backend("auto", layer.cell, x).name == "fused"
    with pytest.raises(ValueError, match="CAROUSEL_NATIVE=0"):
        select_backend("native", layer.cell, x)
    ref = carousel.LSTM(3, 4, variant="peephole", backend="reference")
    ref.load_state_dict(layer.state_dict())
    torch.testing.assert_close(y, ref(x)[0])


def test_missing_library_is_one_warning(monkeypatch, tmp_path):
    """A machine where ``make install`` could not compile: the message names the fix."""
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_isa", None)
    monkeypatch.setattr(native, "_loaded", False)
    monkeypatch.setattr(native, "_failure", None)
    monkeypatch.setattr(native, "DISABLED", False)
    monkeypatch.setattr(native, "HERE", tmp_path)
    with pytest.warns(RuntimeWarning, match="make install"):
        assert not native.available()
    layer = carousel.LSTM(3, 4, variant="peephole")
    x = torch.randn(5, 2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not native.available()  # once
        y, _ = layer(x)
    assert select_backend("auto", layer.cell, x).name == "fused"
    ref = carousel.LSTM(3, 4, variant="peephole", backend="reference")
    ref.load_state_dict(layer.state_dict())
    torch.testing.assert_close(y, ref(x)[0])


def test_the_environment_variable_disables_it(monkeypatch):
    """DISABLED is read from CAROUSEL_NATIVE at import (a subprocess importing torch would
    prove the same at a minute's cost on a crowded machine)."""
    for value, expected in (("0", True), (" 0 ", True), ("1", False), ("", False)):
        monkeypatch.setenv("CAROUSEL_NATIVE", value)
        assert native.disabled_by_environment() is expected
    monkeypatch.delenv("CAROUSEL_NATIVE")
    assert not native.disabled_by_environment()


def test_build_without_a_compiler_says_so(monkeypatch, capsys):
    from carousel.kernels import build

    monkeypatch.setenv("CXX", "/nonexistent/g++")
    assert build.main(["--optional"]) == 0
    assert "numba kernels will serve" in capsys.readouterr().out
    assert build.main([]) == 1


@built
@pytest.mark.parametrize("name", carousel.LSTM_VARIANTS)
def test_native_inference_matches_reference(name):
    """Under no_grad the kernel runs without an autograd node and stores no activations."""
    torch.manual_seed(1)
    kw = {"num_layers": 2, "bidirectional": True, "dtype": torch.float64}
    ref = carousel.make_layer(name, IN, 12, backend="reference", **kw)
    nat = carousel.make_layer(name, IN, 12, backend="native", **kw)
    nat.load_state_dict(ref.state_dict())
    x = torch.randn(T, 3, IN, dtype=torch.float64)
    with torch.no_grad():
        for lengths in (None, torch.tensor([T, 2, 4])):
            (y1, s1), (y2, s2) = nat(x, lengths=lengths), ref(x, lengths=lengths)
            torch.testing.assert_close(y1, y2, **TOL[torch.float64])
            torch.testing.assert_close(s1, s2, **TOL[torch.float64])
