"""Fused CPU kernels: a whole sequence per call, with a hand-derived backward through time.

The backend ``"fused"`` runs one direction of one layer of any registered cell (Elman RNN,
every LSTM variant, GRU) on CPU float32/float64 tensors.  The time loop is compiled with numba
and calls MKL (the BLAS inside torch) for the per-step recurrent product — from weights packed
once per call (``cblas_sgemm_pack``) for float32 batches of equal lengths — and for vectorised
exp/tanh; see :mod:`carousel.kernels._mkl`.  Per-step products below 4M multiply-adds run on
one MKL thread (waking the second costs more than it saves), unless the weight matrix is 2 MB
or more (then two cores each stream half of it).  Under CPU bfloat16 autocast the products
take bfloat16 operands and accumulate in float32.  Each family's derivation opens its
module; ``docs/bptt.md`` has what they share.

Nothing is imported or compiled until a layer first asks: :func:`available` loads the kernels
on first use.  Where they cannot load (numba missing or broken, a torch without MKL), it
warns once and ``backend="auto"`` runs the reference path.  Compiled code is cached on disk
(numba ``cache=True``), so only the first run on a machine pays the compile.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from carousel.cells import FAMILIES, CellOptions

if TYPE_CHECKING:  # carousel.backends imports this module
    from carousel.backends import LayerWeights
    from carousel.kernels.common import Call


class Kernel(Protocol):
    """A family's fused kernel: forward and hand-derived backward through time of one
    direction of one layer, on plain tensors without autograd.  The shared autograd of
    :mod:`carousel.kernels.common` (:func:`~carousel.kernels.common.run_sequence`) wraps it:
    first-order gradients from ``backward``, exact higher-order gradients from the reference
    twin, torch.func (setup_context, vmap rules).  Shapes: x (T, B, I), a state tensor per
    name in ``cell.state_names`` (B, ·), output (T, B, ·)."""

    #: tensors ``forward`` saves for ``backward`` besides the inputs and outputs, each (T, B, ·)
    n_saved: int

    def forward(
        self, call: Call, x: Tensor, state: tuple[Tensor, ...], weights: LayerWeights
    ) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...]]:
        """(output, final state, saved); ``call`` carries the cell, the batch order (lengths),
        the direction, bfloat16 and whether to keep what the backward needs."""

    def backward(
        self,
        call: Call,
        x: Tensor,
        state: tuple[Tensor, ...],
        weights: LayerWeights,
        output: Tensor,
        final: tuple[Tensor, ...],
        saved: tuple[Tensor, ...],
        dout: Tensor,
        dfinal: tuple[Tensor, ...],
        needs: tuple,
    ) -> tuple[Tensor | None, tuple[Tensor | None, ...], LayerWeights]:
        """(dx, dstate, dweights) for the gradients ``needs`` asks for (bools in the
        structure of (x, state, weights)), None elsewhere."""


class KernelModule(Protocol):
    """What a family's fused kernel module provides (named by its record in
    :data:`carousel.cells.FAMILIES`); :mod:`carousel.kernels.lstm` is the model.

    The module opens with its family's backward derivation, and its code follows it."""

    #: the family's :class:`Kernel`
    KERNEL: Kernel


_modules: dict[str, KernelModule] = {}
_failure: str | None = None
_loaded = False

#: set to True to skip loading (tests of the fallback use it through :func:`_load`)
DISABLED = False


def _load() -> None:
    global _failure, _loaded
    if _loaded:
        return
    _loaded = True
    try:
        if DISABLED:
            raise ImportError("carousel.kernels.DISABLED is set")
        for family in FAMILIES.values():
            if family.kernel is not None:
                _modules[family.name] = importlib.import_module(family.kernel)
    except (ImportError, OSError, AttributeError) as err:
        _modules.clear()
        _failure = f"{type(err).__name__}: {err}"
        warnings.warn(
            "carousel: the fused CPU kernels could not load "
            f"({_failure}); layers fall back to the slower reference path",
            RuntimeWarning,
            stacklevel=3,
        )


def available() -> bool:
    """Whether the fused kernels loaded (loads them on the first call)."""
    _load()
    return bool(_modules)


def failure() -> str | None:
    """Why the kernels could not load, or ``None``."""
    _load()
    return _failure


def supports(cell: CellOptions, x: Tensor) -> bool:
    """CPU float32/float64 for every registered family with a kernel, when they loaded."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    return available() and cell.family in _modules


def features(cell: CellOptions) -> frozenset[str]:
    """The extras (:func:`carousel.backends.needs`) the kernel of ``cell``'s family runs: its
    module's ``FEATURES`` (none when it has no such attribute)."""
    if not available() or cell.family not in _modules:
        return frozenset()
    return frozenset(getattr(_modules[cell.family], "FEATURES", ()))


def fused_sequence(cell, x, state, weights, lengths, reverse, masks=None):
    """Run one direction of one layer with the fused kernel of ``cell``'s family.

    The kernel's autograd (first-order gradients from its hand-derived backward, exact
    higher-order gradients from the reference twin, torch.func) is the shared one of
    :func:`carousel.kernels.common.run_sequence`; ``masks`` are the regularisers'
    (:mod:`carousel.cells.masks`)."""
    _load()
    from carousel.kernels.common import run_sequence

    kernel = _modules[cell.family].KERNEL
    return run_sequence(kernel, cell, x, state, weights, lengths, reverse, masks)


def _pair_pays(cell: CellOptions, x: Tensor, H: int) -> bool:
    from carousel.kernels import pair
    from carousel.kernels._mkl import SERIAL_STEP_MACS

    B = x.size(1)
    return (
        pair.ENABLED
        and torch.get_num_threads() >= 2
        and B * cell.num_gates * H * H < SERIAL_STEP_MACS
    )


def fused_pair(cell, x, states, weights, lengths, masks=(None, None)):
    """Both directions of one bidirectional layer: ``states``, ``weights`` and ``masks`` are
    (forward, backward) pairs; returns ((output, final), (output, final)).  The two run
    concurrently (:mod:`carousel.kernels.pair`) where that pays, else one after the other."""
    _load()
    from carousel.kernels.common import run_pair

    H = weights[0].w_hh.size(1)
    kernel = _modules[cell.family].KERNEL
    return run_pair(kernel, cell, x, states, weights, lengths, _pair_pays(cell, x, H), masks)
