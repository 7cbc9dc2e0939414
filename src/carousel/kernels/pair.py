"""Both directions of a bidirectional layer at once, forward and backward, on two threads.

The kernels release the GIL (``nogil``) and torch's products release it too, so the forward
and the backward direction can run side by side.  :func:`both` runs two kernel calls in two
threads, each with one intra-op thread, so two cores do two directions instead of two threads
fighting over each small per-step product; the shared Functions of
:mod:`carousel.kernels.common` use it for a layer's pair of directions (forward and backward
kernels alike).  It is used only when :data:`ENABLED`, with at least two threads, and for
per-step products small enough to run on one MKL thread anyway (see
:data:`carousel.kernels._mkl.SERIAL_STEP_MACS`).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

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


def _no_grad(run):
    with torch.no_grad():  # grad mode is per thread; autograd turned it off only in ours
        return run()


def both(run_a, run_b):
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
