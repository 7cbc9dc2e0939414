"""Higher-order gradients through the fused kernels: ``create_graph=True`` gives a gradient
that is itself differentiable and exact (the kernels' shared autograd, kernels/common.py).

gradgradcheck in float64 for every registered cell × {uni, bi} × {1, 2 layers} × {equal,
ragged lengths}, on tiny shapes with all parameters in one flat tensor (fast_mode: a random
projection of the Jacobian of the backward, both sides); a few full (slow-mode) checks; the
bfloat16 and the two-threads bidirectional paths; and the structure of the first-order path
(still the fused backward kernel, no reference twin, when no second derivative is taken).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.func import functional_call

import carousel
from carousel.kernels import common
from helpers import KERNEL_CASES, NATIVE

T, B, IN, H = 3, 2, 1, 2


def flat_function(layer, lengths):
    """``f(x, theta, *states) -> (output, *final_states)`` with every parameter in theta."""
    names = [n for n, _ in layer.named_parameters()]
    shapes = [p.shape for p in layer.parameters()]
    sizes = [p.numel() for p in layer.parameters()]
    n_states = len(layer.cell.state_names)

    def f(x, theta, *states):
        params = [t.view(s) for t, s in zip(theta.split(sizes), shapes)]
        hx = states[0] if n_states == 1 else tuple(states)
        out, h = functional_call(layer, dict(zip(names, params)), (x, hx), {"lengths": lengths})
        return (out, *(h if isinstance(h, tuple) else (h,)))

    theta = torch.cat([p.detach().reshape(-1) for p in layer.parameters()]).requires_grad_()
    return f, theta


def inputs(layer, batch=B, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, batch, IN, dtype=torch.float64, generator=g).requires_grad_()
    LD = layer.num_layers * layer.num_directions
    states = [
        torch.randn(LD, batch, n, dtype=torch.float64, generator=g).requires_grad_()
        for n in layer.state_sizes()
    ]
    return x, states


CASES = [
    (name, backend, *rest)
    for (name, backend), *rest in itertools.product(
        KERNEL_CASES, [False, True], [1, 2], [False, True]
    )
]


@pytest.mark.parametrize(
    ("name", "backend", "bidirectional", "num_layers", "ragged"),
    CASES,
    ids=[
        f"{n}-{k}-{'bi' if b else 'uni'}-L{L}-{'ragged' if r else 'equal'}"
        for n, k, b, L, r in CASES
    ],
)
def test_gradgradcheck_fused(name, backend, bidirectional, num_layers, ragged):
    """The numba kernels and the native LSTM kernel: the same shared autograd."""
    torch.manual_seed(0)
    layer = carousel.make_layer(
        name, IN, H, num_layers=num_layers, bidirectional=bidirectional,
        dtype=torch.float64, backend=backend,
    )  # fmt: skip
    lengths = torch.tensor([T, 2]) if ragged else None
    f, theta = flat_function(layer, lengths)
    x, states = inputs(layer)
    assert torch.autograd.gradgradcheck(
        f, (x, theta, *states), fast_mode=True, check_undefined_grad=False
    )


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("name", list(carousel.LSTM_VARIANTS))
def test_gradgradcheck_fused_projection(name, bidirectional):
    """proj_size for every LSTM variant: H = 2 projected to P = 1, two layers, ragged."""
    torch.manual_seed(0)
    layer = carousel.make_layer(
        name, IN, H, num_layers=2, bidirectional=bidirectional, proj_size=1,
        dtype=torch.float64, backend="fused",
    )  # fmt: skip
    f, theta = flat_function(layer, torch.tensor([T, 2]))
    x, states = inputs(layer)
    assert torch.autograd.gradgradcheck(
        f, (x, theta, *states), fast_mode=True, check_undefined_grad=False
    )


@pytest.mark.parametrize("name", ["lstm", "peephole", "cifg", "gru", "rnn"])
def test_gradgradcheck_full(name):
    """Every entry of the second-derivative Jacobian, and undefined output gradients."""
    torch.manual_seed(0)
    layer = carousel.make_layer(name, IN, H, dtype=torch.float64, backend="fused")
    f, theta = flat_function(layer, torch.tensor([T, 2]))
    x, states = inputs(layer)
    assert torch.autograd.gradgradcheck(f, (x, theta, *states))


def test_a_missing_second_derivative_fails_the_check(monkeypatch):
    """The check above can fail: with the second-order part zeroed (as before: a gradient
    without a graph) gradgradcheck says no."""
    monkeypatch.setattr(
        common, "reference_second_order", lambda call, needs, kept, wanted, gg: [None] * len(kept)
    )
    layer = carousel.make_layer("lstm", IN, H, dtype=torch.float64, backend="fused")
    f, theta = flat_function(layer, None)
    x, states = inputs(layer)
    assert not torch.autograd.gradgradcheck(
        f, (x, theta, *states), fast_mode=True, raise_exception=False
    )


def _second_order(layer, x, lengths):
    """First gradients (with a graph) of a loss of the outputs, then the gradients of a loss
    of those w.r.t. x and every parameter."""
    params = list(layer.parameters())
    y, state = layer(x, lengths=lengths)
    h = state[0] if isinstance(state, tuple) else state
    first = torch.autograd.grad((y.sin().sum() + h.sum()), [x, *params], create_graph=True)
    second = torch.autograd.grad(sum((g * g).sum() for g in first), [x, *params])
    return first, second


SECOND = [(n, "fused") for n in ("lstm", "peephole", "gru", "rnn")] + [
    (n, "native") for n in (("lstm", "peephole") if NATIVE else ())
]


@pytest.mark.parametrize(("name", "backend"), SECOND, ids=[f"{n}-{k}" for n, k in SECOND])
def test_second_derivatives_match_the_reference(name, backend):
    torch.manual_seed(0)
    ref = carousel.make_layer(name, 3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    ref.backend = "reference"
    fused = carousel.make_layer(name, 3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    fused.load_state_dict(ref.state_dict())
    fused.backend = backend
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 4])
    for a, b in zip(_second_order(fused, x, lengths), _second_order(ref, x, lengths)):
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["fused", "native"] if NATIVE else ["fused"])
def test_third_derivative_matches_the_reference(backend):
    results = []
    for name in (backend, "reference"):
        torch.manual_seed(0)
        layer = carousel.make_layer("lstm", 2, 3, bidirectional=True, dtype=torch.float64)
        layer.backend = name
        x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
        y, _ = layer(x, lengths=[4, 2, 3])
        (g1,) = torch.autograd.grad(y.sin().sum(), x, create_graph=True)
        (g2,) = torch.autograd.grad(g1.sin().sum(), x, create_graph=True)
        (g3,) = torch.autograd.grad(g2.sin().sum(), x)
        results.append((g1, g2, g3))
    assert results[0][2].abs().max() > 1e-3
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


class _Spy:
    """Counts the fused backward kernels and the reference twin's recomputations."""

    def __init__(self, monkeypatch):
        self.kernel = self.reference = 0
        kernel_backward, reference = common._kernel_backward, common._reference

        def counted_kernel(*args):
            self.kernel += 1
            return kernel_backward(*args)

        def counted_reference(*args):
            self.reference += 1
            return reference(*args)

        monkeypatch.setattr(common, "_kernel_backward", counted_kernel)
        monkeypatch.setattr(common, "_reference", counted_reference)


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn"])
def test_first_order_stays_the_fused_kernel(name, monkeypatch):
    """First-order gradients come from the fused backward kernel, one call per direction,
    with or without create_graph; the reference twin runs only for a second derivative."""
    spy = _Spy(monkeypatch)
    layer = carousel.make_layer(name, 3, 4, num_layers=2, bidirectional=True)
    assert layer.backend == "auto"
    x = torch.randn(5, 2, 3, requires_grad=True)
    y, _ = layer(x, lengths=[5, 3])
    torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])
    assert (spy.kernel, spy.reference) == (4, 0)  # 2 layers × 2 directions
    y, _ = layer(x, lengths=[5, 3])
    first = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()], create_graph=True)
    assert (spy.kernel, spy.reference) == (8, 0)
    assert all(g.requires_grad for g in first)
    torch.autograd.grad(sum(g.sum() for g in first), x)
    assert spy.reference == 4  # the second derivative: the reference twin, once a direction


def test_bf16_second_derivative_is_the_float32_reference():
    """Under CPU bfloat16 autocast the first-order gradients come from the bfloat16 kernel;
    the second-order part is the reference twin's, exact in float32 (here the loss is linear
    in the outputs, so it must equal the float32 reference's second derivative)."""
    torch.manual_seed(0)
    ref = carousel.LSTM(8, 8, num_layers=2, bidirectional=True, backend="reference")
    fused = carousel.LSTM(8, 8, num_layers=2, bidirectional=True, backend="fused")
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3, 8, requires_grad=True)
    w = torch.randn(5, 3, 16)
    results = []
    for layer, autocast in ((fused, True), (ref, False)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y, _ = layer(x, lengths=[5, 2, 4])
        first = torch.autograd.grad((y * w).sum(), [x, *layer.parameters()], create_graph=True)
        second = torch.autograd.grad(sum((g * g).sum() for g in first[1:]), x)[0]
        results.append((first, second))
    (first_bf, second_bf), (first_ref, second_ref) = results
    assert (first_bf[1] - first_ref[1]).norm() / first_ref[1].norm() < 3e-2
    assert (first_bf[1] - first_ref[1]).abs().max() > 0  # the bfloat16 kernel did run
    # the second-order part is exact, but it is fed the bfloat16 first-order gradients
    assert (second_bf - second_ref).norm() / second_ref.norm() < 3e-2


def test_bidirectional_pair_gradgradcheck(monkeypatch):
    """Both directions on two threads (kernels.pair), forward and backward kernels alike."""
    from carousel.kernels import pair

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(pair, "ENABLED", True)
    calls = []
    both = pair.both
    monkeypatch.setattr(pair, "both", lambda a, b: calls.append(1) or both(a, b))
    layer = carousel.make_layer(
        "peephole",
        IN,
        H,
        num_layers=2,
        bidirectional=True,
        dtype=torch.float64,
        backend="fused",
    )  # fmt: skip  (auto picks the native kernel, which splits columns, not directions)
    f, theta = flat_function(layer, torch.tensor([T, 2]))
    x, states = inputs(layer)
    assert torch.autograd.gradgradcheck(f, (x, theta, *states), fast_mode=True)
    assert calls
