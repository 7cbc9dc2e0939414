"""Small utilities shared by the test files."""

from __future__ import annotations

import torch
from torch.func import functional_call

import carousel
from carousel.kernels import native

#: the registered cells whose family has a fused kernel (the fused-path tests run these)
FUSED_CELLS = [
    name for name, cell in carousel.CELLS.items() if carousel.FAMILIES[cell.family].kernel
]

#: whether the native LSTM kernel (kernels/native.cpp) is built and loads here (not with
#: CAROUSEL_NATIVE=0: then the tests below run the numba kernels only)
NATIVE = native.available()

#: (cell, backend) for the tests of the kernels' shared autograd: every fused cell on the
#: numba kernels ("fused"), and every LSTM variant on the native kernel where it loads
KERNEL_CASES = [(name, "fused") for name in FUSED_CELLS] + [
    (name, "native") for name in (carousel.LSTM_VARIANTS if NATIVE else ())
]


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def layer_function(layer: carousel.RecurrentLayer, **forward_kwargs):
    """``f(x, *states, *params) -> (output, *final_states)`` for gradcheck and friends."""
    names = [n for n, _ in layer.named_parameters()]
    n_states = len(layer.cell.state_names)

    def f(x, *rest):
        states, params = rest[:n_states], rest[n_states:]
        hx = states[0] if n_states == 1 else tuple(states)
        out, h = functional_call(layer, dict(zip(names, params)), (x, hx), forward_kwargs)
        return (out, *as_tuple(h))

    return f


def random_state(layer: carousel.RecurrentLayer, batch: int, dtype=torch.float64):
    """One random (L·D, B, H) tensor per state name, requiring grad."""
    shape = (layer.num_layers * layer.num_directions, batch, layer.hidden_size)
    return tuple(
        torch.randn(shape, dtype=dtype, requires_grad=True) for _ in layer.cell.state_names
    )


def grads(outputs, inputs):
    """Gradients of a fixed random projection of ``outputs`` w.r.t. ``inputs``."""
    gen = torch.Generator().manual_seed(1)
    loss = sum(
        (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
        for o in outputs
        if o is not None
    )
    return torch.autograd.grad(loss, inputs, allow_unused=True)
