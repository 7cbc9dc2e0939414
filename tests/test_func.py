"""torch.func on the fused kernels: grad, vmap, vmap(grad) (per-sample gradients), jacrev,
grad of grad, vmap over stacked parameters (ensembles), and gradcheck's batched-gradient check,
for every registered cell, against the reference twin run through the same transforms."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, jacrev, vmap

import carousel
from carousel.kernels import common
from helpers import KERNEL_CASES

T, B, IN, H, V = 4, 3, 2, 3, 3
LENGTHS = torch.tensor([4, 2, 3])
TOL = {"rtol": 1e-10, "atol": 1e-12}


def _pair(name, backend="fused", **kw):
    torch.manual_seed(0)
    fused = carousel.make_layer(name, IN, H, dtype=torch.float64, backend=backend, **kw)
    ref = carousel.make_layer(name, IN, H, dtype=torch.float64, backend="reference", **kw)
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def _output(layer, params, x):
    out, state = functional_call(layer, params, (x,), {"lengths": LENGTHS})
    h = state[0] if isinstance(state, tuple) else state
    return out, h


def _loss(layer):
    def loss(params, x):
        out, h = _output(layer, params, x)
        return out.sin().sum() + h.square().sum()

    return loss


def _close(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], **TOL)
    else:
        torch.testing.assert_close(a, b, **TOL)


class _Forwards:
    """Counts the fused forward kernel's calls."""

    def __init__(self, monkeypatch):
        self.n = 0
        forward = common._kernel_forward

        def counted(*args):
            self.n += 1
            return forward(*args)

        monkeypatch.setattr(common, "_kernel_forward", counted)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize(
    ("name", "backend"), KERNEL_CASES, ids=[f"{n}-{k}" for n, k in KERNEL_CASES]
)
def test_transforms_match_the_reference(name, backend, bidirectional, monkeypatch):
    fused, ref = _pair(name, backend, num_layers=2, bidirectional=bidirectional)
    params = {k: v.detach() for k, v in fused.named_parameters()}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, IN, dtype=torch.float64, generator=g)
    xs = torch.randn(V, T, B, IN, dtype=torch.float64, generator=g)
    forwards = _Forwards(monkeypatch)
    D = 2 if bidirectional else 1

    # grad
    _close(grad(_loss(fused))(params, x), grad(_loss(ref))(params, x))
    # vmap over inputs: the V copies are folded into the batch, one kernel call a direction
    n = forwards.n
    got = vmap(lambda x: _output(fused, params, x))(xs)
    assert forwards.n - n == 2 * D
    for a, b in zip(got, vmap(lambda x: _output(ref, params, x))(xs)):
        _close(a, b)
    # per-sample gradients
    per_sample = vmap(grad(_loss(fused)), in_dims=(None, 0))(params, xs)
    _close(per_sample, vmap(grad(_loss(ref)), in_dims=(None, 0))(params, xs))
    # jacrev (vmap over the vector-Jacobian products)
    _close(jacrev(lambda x: _output(fused, params, x)[0])(x),
           jacrev(lambda x: _output(ref, params, x)[0])(x))  # fmt: skip

    # grad of grad
    def gg(layer):
        return lambda x: grad(lambda x: _loss(layer)(params, x))(x).sin().sum()

    _close(grad(gg(fused))(x), grad(gg(ref))(x))
    # vmap over stacked parameters (an ensemble)
    stacked = {k: torch.stack([v * (1 + 0.1 * i) for i in range(V)]) for k, v in params.items()}
    for a, b in zip(
        vmap(lambda p: _output(fused, p, x))(stacked), vmap(lambda p: _output(ref, p, x))(stacked)
    ):
        _close(a, b)
    assert forwards.n > n  # and the fused kernels ran throughout


@pytest.mark.parametrize(
    ("name", "backend"), KERNEL_CASES, ids=[f"{n}-{k}" for n, k in KERNEL_CASES]
)
def test_gradcheck_batched_grad(name, backend):
    fused, _ = _pair(name, backend, bidirectional=True)
    names = [k for k, _ in fused.named_parameters()]
    x = torch.randn(T, B, IN, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in fused.parameters()]

    def f(x, *ps):
        return _output(fused, dict(zip(names, ps)), x)

    assert torch.autograd.gradcheck(f, (x, *params), check_batched_grad=True, fast_mode=True)


def test_is_grads_batched_matches_one_at_a_time():
    """autograd.grad(is_grads_batched=True) (torch's legacy vmap) gives each row's gradient."""
    fused, _ = _pair("peephole", num_layers=2, bidirectional=True)
    x = torch.randn(T, B, IN, dtype=torch.float64, requires_grad=True)
    y, _ = fused(x, lengths=LENGTHS)
    gy = torch.randn(V, *y.shape, dtype=torch.float64)
    (batched,) = torch.autograd.grad(y, x, gy, retain_graph=True, is_grads_batched=True)
    for v in range(V):
        (one,) = torch.autograd.grad(y, x, gy[v], retain_graph=True)
        torch.testing.assert_close(batched[v], one, **TOL)
