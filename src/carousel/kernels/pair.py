"""Both directions of a bidirectional layer at once, forward and backward, on two threads.

The kernels release the GIL (``nogil``) and torch's products release it too, so the forward
and the backward direction can run side by side.  :class:`PairFunction` wraps a family's
``torch.autograd.Function`` and runs its ``forward`` (and later its ``backward``) for the two
directions in two threads, each with one intra-op thread, so two cores do two directions
instead of two threads fighting over each small per-step product.  It is used only when
:data:`ENABLED`, with at least two threads, and for per-step products small enough to run on
one MKL thread anyway (see :data:`carousel.kernels._mkl.SERIAL_STEP_MACS`).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.autograd.function import once_differentiable

#: off by default: handing one direction to a second thread has not paid where it was
#: measured (bench/cells_bidir.py, BENCHMARKS.md).  ``carousel.kernels.pair.ENABLED = True``
#: turns it on.
ENABLED = False

_POOL: ThreadPoolExecutor | None = None
_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="carousel-pair")
        return _POOL


class _Ctx:
    """Stands in for autograd's ctx when a family Function runs inside :class:`PairFunction`."""

    def __init__(self, needs_input_grad: tuple[bool, ...]) -> None:
        self.needs_input_grad = needs_input_grad
        self.saved_tensors: tuple = ()

    def save_for_backward(self, *tensors) -> None:
        self.saved_tensors = tensors


def _no_grad(run):
    with torch.no_grad():  # grad mode is per thread; autograd turned it off only in ours
        return run()


def _both(run_a, run_b):
    """run_b on the pool's thread while run_a runs here, each with one intra-op thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        future = _pool().submit(_no_grad, run_b)
        try:
            a = run_a()
        finally:
            b = future.result()
    finally:
        torch.set_num_threads(threads)
    return a, b


class PairFunction(torch.autograd.Function):
    """``fn`` (a family Function) applied to two argument lists of length ``n`` at once."""

    @staticmethod
    def forward(ctx, fn, n, *args):
        needs = ctx.needs_input_grad[2:]
        ca, cb = _Ctx(needs[:n]), _Ctx(needs[n:])
        out_a, out_b = _both(lambda: fn.forward(ca, *args[:n]), lambda: fn.forward(cb, *args[n:]))
        ctx.fn, ctx.n, ctx.contexts = fn, n, (ca, cb)
        ctx.split, ctx.n_out = len(ca.saved_tensors), len(out_a)
        ctx.save_for_backward(*ca.saved_tensors, *cb.saved_tensors)
        ca.saved_tensors = cb.saved_tensors = ()
        return (*out_a, *out_b)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        ca, cb = ctx.contexts
        saved = ctx.saved_tensors
        ca.saved_tensors, cb.saved_tensors = saved[: ctx.split], saved[ctx.split :]
        k = ctx.n_out
        ga, gb = _both(
            lambda: ctx.fn.backward(ca, *grads[:k]), lambda: ctx.fn.backward(cb, *grads[k:])
        )
        ca.saved_tensors = cb.saved_tensors = ()
        return (None, None, *ga, *gb)
