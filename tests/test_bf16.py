"""The bfloat16 path of the fused kernels (``torch.autocast("cpu", dtype=torch.bfloat16)``).

Matrix products take bfloat16 operands and accumulate in float32; states, gates and outputs
stay float32.  Stated tolerance against the float32 reference: every output, final state and
gradient within 3 % (relative, in norm); measured here about 0.3–0.6 %.  The products
themselves are checked exactly against float32 products of the rounded operands.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import carousel
from carousel.kernels import common
from carousel.kernels._mkl import BF16, to_bf16
from carousel.kernels.common import bf16_wanted, matmul
from helpers import FUSED_CELLS

T, B, IN, H = 6, 4, 16, 16
BF16_RTOL = 3e-2


def _bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _run(layer, x, lengths, hx, weights, autocast):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y, state = layer(x, hx, lengths=lengths)
    states = (state,) if isinstance(state, torch.Tensor) else state
    loss = (y * weights[0]).sum() + sum((s * w).sum() for s in states for w in weights[1:2])
    grads = torch.autograd.grad(loss, [x, *layer.parameters()])
    return (y, *states, *grads)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("ragged", [False, True], ids=["equal", "ragged"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("name", FUSED_CELLS)
def test_bf16_fused_is_close_to_float32_reference(name, bidirectional, ragged):
    torch.manual_seed(0)
    ref = carousel.make_layer(name, IN, H, num_layers=2, bidirectional=bidirectional)
    ref.backend = "reference"
    fused = carousel.make_layer(name, IN, H, num_layers=2, bidirectional=bidirectional)
    fused.load_state_dict(ref.state_dict())
    fused.backend = "fused"
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, IN, generator=g).requires_grad_()
    lengths = torch.tensor([T, 2, T - 1, 1]) if ragged else None
    D = 2 if bidirectional else 1
    weights = [torch.randn(T, B, D * H, generator=g), torch.randn(2 * D, B, H, generator=g)]
    expected = _run(ref, x, lengths, None, weights, autocast=False)
    got = _run(fused, x, lengths, None, weights, autocast=True)
    exact = _run(fused, x, lengths, None, weights, autocast=False)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.dtype == torch.float32
        assert _rel(a, b) < BF16_RTOL
    # the bfloat16 products did run: the result is not the float32 one
    assert _rel(got[0], exact[0]) > 1e-4
    if ragged:  # padding stays zero
        assert got[0][2:, 1].abs().max() == 0


def test_to_bf16_rounds_like_torch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10_000, generator=g) * torch.logspace(-20, 20, 10_000)
    bits = torch.tensor([0x3F808000, 0x3F818000, 0x3F80FFFF, 0x3F807FFF, 0], dtype=torch.int32)
    x = torch.cat([x, bits.view(torch.float32), -bits.view(torch.float32)])  # ties, near-ties
    out = np.empty(x.numel(), np.uint16)
    to_bf16(x.numpy(), out, x.numel())
    want = x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_bf16_matmul_is_the_float32_product_of_rounded_operands(ta, tb):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(37, 19, generator=g)
    b = torch.randn(19, 23, generator=g)
    a_in = a.t().contiguous().t() if ta else a  # a transposed view, as the kernels pass it
    b_in = b.t().contiguous().t() if tb else b
    want = a.bfloat16().float() @ b.bfloat16().float()
    torch.testing.assert_close(matmul(a_in, b_in, bf16=True), want, rtol=1e-5, atol=1e-5)
    out = torch.ones(37, 23)
    torch.testing.assert_close(matmul(a_in, b_in, True, out=out), want + 1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(matmul(a, b, bf16=False), a @ b)


def test_bf16_is_chosen_by_cpu_autocast_only():
    x = torch.randn(2, 3)
    assert not bf16_wanted(x)
    with _bf16():
        assert bf16_wanted(x)
        assert not bf16_wanted(x.double())
    with torch.autocast("cpu", dtype=torch.float16):
        assert not bf16_wanted(x)


def test_bf16_input_is_taken_under_autocast_and_refused_outside():
    layer = carousel.LSTM(8, 8)
    x = torch.randn(5, 2, 8, dtype=torch.bfloat16)
    with _bf16():
        y, (h, c) = layer(x)
    assert y.dtype == h.dtype == c.dtype == torch.float32
    with pytest.raises(ValueError, match=r"dtype torch\.float32"):
        layer(x)


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn"])
def test_reference_path_runs_under_autocast(name):
    """The path CUDA takes (and any backend without a bf16 kernel) still runs and trains."""
    torch.manual_seed(0)
    layer = carousel.make_layer(name, IN, H, backend="reference")
    x = torch.randn(T, B, IN, requires_grad=True)
    want, _ = layer(x)
    with _bf16():
        y, _ = layer(x)
    assert _rel(y.float(), want) < BF16_RTOL
    y.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("ragged", [False, True], ids=["equal", "ragged"])
@pytest.mark.parametrize("name", ["lstm", "peephole", "gru", "rnn"])
def test_bf16_per_step_products_from_32_rows(name, ragged):
    """From BF16_STEP_ROWS rows the per-step products run in bfloat16 too (below, only the
    products over all steps do); the same tolerance holds."""
    rows = common.BF16_STEP_ROWS
    T2 = 4
    lengths = torch.randint(1, T2 + 1, (rows,), generator=torch.Generator().manual_seed(3))
    lengths[0] = T2
    order = common.Order(T2, rows, lengths if ragged else None)
    assert order.packed(torch.float32, bf16=True) == BF16
    assert common.Order(T2, rows - 1, None).packed(torch.float32, bf16=True) != BF16
    torch.manual_seed(0)
    ref = carousel.make_layer(name, IN, H, backend="reference")
    fused = carousel.make_layer(name, IN, H, backend="fused")
    fused.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T2, rows, IN, generator=g).requires_grad_()
    weights = [torch.randn(T2, rows, H, generator=g), torch.randn(1, rows, H, generator=g)]
    lens = lengths if ragged else None
    expected = _run(ref, x, lens, None, weights, autocast=False)
    got = _run(fused, x, lens, None, weights, autocast=True)
    for a, b in zip(got, expected):
        assert _rel(a, b) < BF16_RTOL
    assert _rel(got[0], _run(fused, x, lens, None, weights, autocast=False)[0]) > 1e-4
