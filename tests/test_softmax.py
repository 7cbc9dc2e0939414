"""The fused output layer + cross-entropy (carousel.kernels.softmax) against torch's ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from carousel import kernels
from carousel.kernels.softmax import linear_cross_entropy
from carousel.lm.config import LMConfig
from carousel.lm.model import RNNLM

TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-12}, torch.float32: {"rtol": 1e-5, "atol": 1e-6}}


def _inputs(dtype, N=37, H=8, V=53, scale=1.0):
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(N, H, dtype=dtype, generator=g) * scale).requires_grad_()
    w = torch.randn(V, H, dtype=dtype, generator=g).requires_grad_()
    b = torch.randn(V, dtype=dtype, generator=g).requires_grad_()
    t = torch.randint(0, V, (N,), generator=g)
    return h, w, b, t


@pytest.mark.parametrize("scale", [1.0, 1e3], ids=["plain", "huge-logits"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_torch_loss_and_gradients(dtype, scale):
    h, w, b, t = _inputs(dtype, scale=scale)
    tol = TOL[dtype]
    if dtype == torch.float32 and scale > 1:  # logits ~ 1e3: their own rounding is ~1e-4
        tol = {"rtol": 1e-4, "atol": 1e-5}
    got = linear_cross_entropy(h, w, b, t)
    want = F.cross_entropy(F.linear(h, w, b), t)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, want, **tol)
    g_got = torch.autograd.grad(got * 3, [h, w, b])
    g_want = torch.autograd.grad(want * 3, [h, w, b])
    for a, e in zip(g_got, g_want):
        torch.testing.assert_close(a, e, **tol)


def test_gradcheck_float64():
    h, w, b, t = _inputs(torch.float64, N=6, H=3, V=7)
    assert torch.autograd.gradcheck(lambda h, w, b: linear_cross_entropy(h, w, b, t), (h, w, b))


def test_backward_twice_gives_the_same_gradients():
    h, w, b, t = _inputs(torch.float32)
    loss = linear_cross_entropy(h, w, b, t)
    first = torch.autograd.grad(loss, [h, w, b], retain_graph=True)
    second = torch.autograd.grad(loss, [h, w, b])
    for a, c in zip(first, second):
        torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_without_bias():
    h, w, _, t = _inputs(torch.float64)
    got = linear_cross_entropy(h, w, None, t)
    torch.testing.assert_close(got, F.cross_entropy(F.linear(h, w), t), **TOL[torch.float64])
    dh, dw = torch.autograd.grad(got, [h, w])
    want = torch.autograd.grad(F.cross_entropy(F.linear(h, w), t), [h, w])
    torch.testing.assert_close(dh, want[0], **TOL[torch.float64])
    torch.testing.assert_close(dw, want[1], **TOL[torch.float64])


def test_bf16_under_autocast_is_close_and_really_bf16():
    h, w, b, t = _inputs(torch.float32, N=64, H=32, V=300)
    want = F.cross_entropy(F.linear(h, w, b), t)
    g_want = torch.autograd.grad(want, [h, w, b])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(h, w, b, t)
    assert got.dtype == torch.float32
    g_got = torch.autograd.grad(got, [h, w, b])
    rel = abs(got.item() - want.item()) / want.item()
    assert 1e-7 < rel < 1e-2  # rounded operands: close to, but not exactly, float32
    for a, e in zip(g_got, g_want):
        assert ((a - e).norm() / e.norm()).item() < 3e-2


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "torch-ops"])
def test_lm_loss_with_targets_equals_cross_entropy_of_its_logits(fused, monkeypatch):
    if not fused:
        monkeypatch.setattr(kernels, "available", lambda: False)
    torch.manual_seed(0)
    cfg = LMConfig(hidden_size=8, num_layers=2, level="word")
    model = RNNLM(29, cfg)
    ids = torch.randint(0, 29, (5, 3))
    targets = torch.randint(0, 29, (5, 3))
    logits, state = model(ids)
    want = F.cross_entropy(logits.reshape(-1, 29), targets.reshape(-1))
    loss, state2 = model(ids, targets=targets)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(state2[0], state[0])
    loss.backward()
    assert model.decoder.weight.grad is not None and model.embedding.weight.grad is not None
