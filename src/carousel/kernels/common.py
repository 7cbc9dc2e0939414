"""What every fused kernel shares: the batch order that skips padding, and numpy views.

Variable lengths do no work on padding: the batch is ordered by length, longest first, so at
step t the sequences still running are a prefix ``perm[:nlive[t]]`` and the recurrent product
is one GEMM over that prefix, as in a ``PackedSequence``.  States are carried in that order
inside the kernels; everything stored per step is indexed by the sequence's own time position
``pos`` (``t``, or ``lengths[b] − 1 − t`` for the reverse direction), so inputs, outputs and
gradients stay in the caller's (T, B, ·) layout and the big products over all steps need no
reordering.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from carousel.backends import LayerWeights
from carousel.cells import CellOptions
from carousel.cells.masks import Masks

#: bfloat16 per-step products from this many rows up; below, the per-step products stay
#: float32 (MKL's bfloat16 GEMM re-packs the weights at every call, which a few rows do not
#: repay; BENCHMARKS.md, "bfloat16") while the products over all steps still run in bfloat16.
BF16_STEP_ROWS = 32


@functools.lru_cache(maxsize=64)
def _identity(T: int, B: int) -> tuple[Tensor, Tensor, Tensor]:
    """perm, lengths, nlive of a batch without padding (cached: the kernels only read them)."""
    perm = torch.arange(B)
    lengths = torch.full((B,), T, dtype=torch.int64)
    nlive = torch.full((T,), B, dtype=torch.int64)
    return perm, lengths, nlive


class Order:
    """The batch order of one call: ``perm`` (B,), ``lengths`` (B,), ``nlive`` (T,), int64."""

    def __init__(self, T: int, B: int, lengths: Tensor | None) -> None:
        if lengths is None:
            self.perm, self.lengths, self.nlive = _identity(T, B)
            self.identity = True
        else:
            lengths = lengths.to(device="cpu", dtype=torch.int64)
            self.perm = torch.argsort(lengths, descending=True, stable=True)
            self.lengths = lengths.contiguous()
            steps = torch.arange(T).unsqueeze(1)  # (T, 1)
            self.nlive = (lengths.unsqueeze(0) > steps).sum(1)  # (T,)
            self.identity = False

    def sort(self, state: Tensor) -> Tensor:
        """(B, H) in batch order -> a fresh contiguous copy in kernel (length) order."""
        if self.identity:
            return state.detach().clone(memory_format=torch.contiguous_format)
        return state.detach().index_select(0, self.perm).contiguous()

    def unsort(self, state: Tensor) -> Tensor:
        """(B, H) in kernel order -> batch order."""
        if self.identity:
            return state
        out = torch.empty_like(state)
        out[self.perm] = state
        return out

    def buffer(self, T: int, B: int, width: int, dtype: torch.dtype) -> Tensor:
        """A (T, B, width) buffer every live step writes: zeros where there is padding (the
        kernels never touch it), left uninitialised when there is none."""
        if self.identity:
            return torch.empty(T, B, width, dtype=dtype)
        return torch.zeros(T, B, width, dtype=dtype)

    def packed(self, dtype: torch.dtype, bf16: bool = False) -> int:
        """How the kernels run the per-step product (:func:`carousel.kernels._mkl.step_gemm`):
        BF16 when asked for and the batch has at least :data:`BF16_STEP_ROWS` rows; PACKED,
        MKL's packed weights, for float32 with every step over all B rows (a packed matrix
        serves one product shape); else PLAIN."""
        from carousel.kernels._mkl import BF16, PACKED, PLAIN

        if bf16 and int(self.nlive[0]) >= BF16_STEP_ROWS:
            return BF16
        return PACKED if self.identity and dtype == torch.float32 else PLAIN

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.perm.numpy(), self.lengths.numpy(), self.nlive.numpy()


def np_(t: Tensor) -> np.ndarray:
    """A numpy view of a contiguous CPU tensor (no copy, no autograd)."""
    return t.detach().numpy()


def scratch(dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The by-reference scalar buffers the Fortran GEMM needs (see :func:`_mkl.gemm`)."""
    return np.zeros(8, np.int32), np.zeros(2, np.float32 if dtype == torch.float32 else np.float64)


def bf16_wanted(x: Tensor) -> bool:
    """Whether a fused kernel on ``x`` runs its matrix products in bfloat16: ``x`` is float32
    and the caller is inside ``torch.autocast("cpu", dtype=torch.bfloat16)``."""
    return (
        x.dtype == torch.float32
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


def no_autocast(fn: Callable) -> Callable:
    """Run ``fn`` (a Function's forward or backward) with CPU autocast off: the kernels pick
    each product's precision themselves."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not torch.is_autocast_enabled("cpu"):  # the common case: no context to enter
            return fn(*args, **kwargs)
        with torch.autocast("cpu", enabled=False):
            return fn(*args, **kwargs)

    return wrapper


def presigned(fn: Callable) -> Callable:
    """``fn`` with its signature computed once: ``Function.apply`` binds the forward's
    signature at every call when there is a ``setup_context``, and ``inspect.signature``
    returns a stored ``__signature__`` at once."""
    fn.__signature__ = inspect.signature(fn)
    return fn


def _bf16_operand(t: Tensor) -> tuple[int, np.ndarray, int]:
    """(trans, bfloat16 bits, leading dimension) of a 2-D operand, transposed views free."""
    from carousel.kernels._mkl import TR, N

    if not t.is_contiguous() and t.t().is_contiguous():
        return TR, _bits(t.t()), t.size(0)
    return N, _bits(t.contiguous()), t.size(1)


def _bits(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16).reshape(-1)


def matmul(a: Tensor, b: Tensor, bf16: bool, out: Tensor | None = None) -> Tensor:
    """a (m, k) @ b (k, n), added to ``out`` (m, n) when given.

    With ``bf16`` the operands are rounded to bfloat16 (free if they already are) and the
    product accumulates in float32 (MKL's ``cblas_gemm_bf16bf16f32``); the result is float32.
    """
    if not bf16:
        return a.mm(b) if out is None else out.addmm_(a, b)
    from carousel.kernels._mkl import mm_bf16

    (m, k), n = a.shape, b.size(1)
    ta, A, lda = _bf16_operand(a)
    tb, B, ldb = _bf16_operand(b)
    beta = 0.0 if out is None else 1.0
    if out is None:
        out = torch.empty(m, n, dtype=torch.float32)
    mm_bf16(ta, tb, m, n, k, A, lda, B, ldb, beta, np_(out).reshape(-1), n)
    return out


def input_products(x: Tensor, w_ih: Tensor, bias: Tensor | None, bf16: bool) -> Tensor:
    """W_ih x_t + bias for all steps in one product: (T·B, I) -> (T·B, G·H)."""
    if bias is None:
        return matmul(x, w_ih.t(), bf16)
    out = bias.detach().expand(x.size(0), -1).contiguous()
    return matmul(x, w_ih.t(), bf16, out=out)


def flat_weight_grads(
    dA: Tensor,
    x: Tensor,
    hprev: Tensor,
    w_ih: Tensor,
    needs: tuple[bool, ...],
    bf16: bool = False,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """The big products over all steps: dx, dW_ih, dW_hh and the bias gradient.

    dA (T, B, G·H) is the gradient of the gates' pre-activations (zero on padding), x (T, B, I)
    the input, hprev (T, B, H) the state each step read.  ``needs`` = (x, w_ih, w_hh, bias).
    With ``bf16`` the products take bfloat16 operands and accumulate in float32.
    """
    T, B, GH = dA.shape
    dA2 = dA.view(T * B, GH)  # (B10) of docs/bptt.md (GB7, RB4): one product each, over all steps
    db = dA2.sum(0) if needs[3] else None
    x2, h2 = x.reshape(T * B, -1), hprev.view(T * B, -1)
    if bf16:  # round each operand once, not once per product
        dA2 = dA2.to(torch.bfloat16)
        x2 = x2.to(torch.bfloat16) if needs[1] else x2
        h2 = h2.to(torch.bfloat16) if needs[2] else h2
    dx = matmul(dA2, w_ih, bf16).view(T, B, -1) if needs[0] else None
    dw_ih = matmul(dA2.t(), x2, bf16) if needs[1] else None
    dw_hh = matmul(dA2.t(), h2, bf16) if needs[2] else None
    return dx, dw_ih, dw_hh, db


# ---------------------------------------------------------------------------------------------
# The autograd side, shared by every fused kernel
#
# A kernel family provides an object with two functions (the *kernel protocol*):
#
#     forward(call, x, state, weights) -> (output, final, saved)
#     backward(call, x, state, weights, output, final, saved, dout, dfinal, needs)
#         -> (dx, dstate, dweights)
#
# x (T, B, I), state/final one (B, ·) tensor per state name, weights a LayerWeights, output
# (T, B, ·); ``saved`` is a tuple of ``n_saved`` fresh (T, B, ·) tensors the backward needs
# (the gates' activations, say), which the backward gets back with the inputs and outputs.
# ``needs`` has the structure of (x, state, weights) with bools; the backward returns
# gradients in that structure (dweights a LayerWeights of gradients), None where not needed.
# Both run without autograd on plain tensors.  :func:`run_sequence` wraps any such kernel
# in the two Functions below, which give it first-order gradients from the kernel's own
# backward, exact higher-order gradients from the reference twin, and torch.func support
# (setup_context and vmap rules).
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Call:
    """What one fused call of one direction knows besides its tensors."""

    kernel: Any  # the family's kernel object (the protocol above)
    cell: CellOptions
    n_state: int  # tensors in the state (h, or h and c)
    peep_names: tuple[str, ...]  # the order of the peephole tensors in the flat layout
    lengths: Tensor | None  # (B,) as the layer passed them (what the reference twin reads)
    order: Order
    reverse: bool
    bf16: bool  # products in bfloat16 (CPU bfloat16 autocast)
    store: bool  # keep what the backward needs (False in inference)
    masks: Masks | None = None  # the regularisers' masks (carousel.cells.masks), or none
    ln_names: tuple[str, ...] = ()  # the order of the layer-norm parameters (LSTM layer_norm)

    @property
    def n_flat(self) -> int:
        """Tensors (or Nones) of one direction in the flat layout."""
        return 1 + self.n_state + 5 + len(self.peep_names) + len(self.ln_names)

    @property
    def n_out(self) -> int:
        """Outputs of the forward kernel: output, final state, saved."""
        return 1 + self.n_state + self.kernel.n_saved

    def flatten(self, x, state, weights) -> tuple:
        """(x, state, weights) -> x, *state, w_ih, w_hh, b_ih, b_hh, w_hr, *peepholes,
        *layer-norm parameters."""
        w = weights
        peep = tuple(w.peep[name] for name in self.peep_names)
        ln = tuple(w.ln[name] for name in self.ln_names)
        return (x, *state, w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.w_hr, *peep, *ln)

    def unflatten(self, flat: Sequence) -> tuple:
        """The inverse of :meth:`flatten` (for tensors, gradients or bools alike)."""
        k = 1 + self.n_state
        x, state = flat[0], tuple(flat[1:k])
        w_ih, w_hh, b_ih, b_hh, w_hr = flat[k : k + 5]
        n_peep = len(self.peep_names)
        peep = dict(zip(self.peep_names, flat[k + 5 : k + 5 + n_peep]))
        ln = dict(zip(self.ln_names, flat[k + 5 + n_peep :])) if self.ln_names else None
        return x, state, LayerWeights(w_ih, w_hh, b_ih, b_hh, peep, w_hr, ln)

    def folded(self, V: int) -> Call:
        """This call for V copies of its batch side by side (copy v's sequence b at v·B + b)."""
        B = self.order.perm.numel()
        T = self.order.nlive.numel()
        lengths = None if self.lengths is None else self.lengths.repeat(V)
        masks = None if self.masks is None else self.masks.repeat(V)
        order = Order(T, V * B, lengths)
        return dataclasses.replace(self, lengths=lengths, order=order, masks=masks)


def _apply(calls: tuple, concurrent: bool, flat: list) -> tuple:
    """``SequenceFunction.apply``; or, where no call keeps anything for a backward pass and
    no tracer or torch.func transform is watching, its forward alone: an autograd node that
    would record nothing costs a sampler's one-token call more than the kernel does."""
    if (
        not any(c.store for c in calls)
        and not torch.jit.is_tracing()
        and torch._C._functorch.peek_interpreter_stack() is None
    ):
        return SequenceFunction.forward(calls, concurrent, *flat)
    return SequenceFunction.apply(calls, concurrent, *flat)


def run_sequence(kernel, cell, x, state, weights, lengths, reverse, masks=None) -> tuple:
    """Run one direction of one layer with ``kernel``; ``reference_sequence``'s signature
    (and its ``masks``)."""
    call = make_call(kernel, cell, x, state, weights, lengths, reverse, masks)
    outputs = _apply((call,), False, call.flatten(x, state, weights))
    return outputs[0], tuple(outputs[1 : 1 + call.n_state])


def run_pair(
    kernel, cell, x, states, weights, lengths, concurrent: bool, masks=(None, None)
) -> tuple:
    """Both directions of a bidirectional layer in one Function, side by side on two threads
    when ``concurrent`` (:mod:`carousel.kernels.pair`); ((output, final), (output, final))."""
    calls = tuple(
        make_call(kernel, cell, x, s, w, lengths, reverse, m)
        for s, w, reverse, m in zip(states, weights, (False, True), masks)
    )
    flat = [t for c, s, w in zip(calls, states, weights) for t in c.flatten(x, s, w)]
    outputs = _apply(calls, concurrent, flat)
    results, at = [], 0
    for c in calls:
        results.append((outputs[at], tuple(outputs[at + 1 : at + 1 + c.n_state])))
        at += c.n_out
    return tuple(results)


def make_call(kernel, cell, x, state, weights, lengths, reverse, masks=None) -> Call:
    tensors = (x, *state, weights.w_ih, weights.w_hh, weights.b_ih, weights.b_hh, weights.w_hr)
    tensors += tuple(weights.peep.values()) + tuple((weights.ln or {}).values())
    store = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    T, B = x.shape[:2]
    return Call(
        kernel=kernel,
        cell=cell,
        n_state=len(state),
        peep_names=tuple(weights.peep),
        lengths=lengths,
        order=Order(T, B, lengths),
        reverse=bool(reverse),
        bf16=bf16_wanted(x),
        store=store,
        masks=masks,
        ln_names=tuple(weights.ln or ()),
    )


def _split(seq: Sequence, sizes: Sequence[int]) -> list[tuple]:
    parts, at = [], 0
    for n in sizes:
        parts.append(tuple(seq[at : at + n]))
        at += n
    return parts


def _together(runs: list[Callable], concurrent: bool) -> list:
    """Call each of ``runs``; two of them on two threads when ``concurrent``."""
    if concurrent and len(runs) == 2:
        from carousel.kernels.pair import both

        return list(both(*runs))
    return [run() for run in runs]


def _contiguous(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


class SequenceFunction(torch.autograd.Function):
    """One or two directions (``calls``) of one layer through their fused kernels.

    Outputs, per call: output, final state, then the kernel's saved tensors (not
    differentiable; the caller drops them).  The backward is :class:`SequenceBackward`, so
    a gradient taken with ``create_graph=True`` is itself differentiable.
    """

    @staticmethod
    @presigned
    @no_autocast
    def forward(calls, concurrent, *tensors):
        parts = _split(tensors, [c.n_flat for c in calls])
        runs = [
            functools.partial(_kernel_forward, c, [_contiguous(t) for t in p])
            for c, p in zip(calls, parts)
        ]
        return tuple(t for result in _together(runs, concurrent) for t in result)

    @staticmethod
    def setup_context(ctx, inputs, output):
        calls, concurrent, *tensors = inputs
        ctx.calls, ctx.concurrent = calls, concurrent
        ctx.set_materialize_grads(False)
        outs = _split(output, [c.n_out for c in calls])
        ctx.mark_non_differentiable(*(t for c, o in zip(calls, outs) for t in o[1 + c.n_state :]))
        ctx.save_for_backward(*tensors, *output)

    @staticmethod
    def backward(ctx, *grads):
        calls = ctx.calls
        saved = ctx.saved_tensors
        n_in = sum(c.n_flat for c in calls)
        ins = _split(saved[:n_in], [c.n_flat for c in calls])
        outs = _split(saved[n_in:], [c.n_out for c in calls])
        gouts = _split(grads, [c.n_out for c in calls])
        needs = _split(ctx.needs_input_grad[2:], [c.n_flat for c in calls])
        if any(_legacy_batched(g) for g in grads):
            return (None, None, *_legacy_vmap_backward(calls, ins, gouts, needs))
        args = []
        for c, i, o, g in zip(calls, ins, outs, gouts):
            if not c.store:
                raise RuntimeError(
                    "carousel: a fused call that kept nothing for the backward pass (run "
                    "without grad) was asked for gradients"
                )
            k = 1 + c.n_state
            g = tuple(torch.zeros_like(t) if d is None else d for t, d in zip(o[:k], g[:k]))
            args += [*i, *(t.detach() for t in o), *g]
        got = SequenceBackward.apply(calls, needs, ctx.concurrent, *args)
        result, at = [None, None], 0
        for i, n in zip(ins, needs):
            for t, wanted in zip(i, n):
                if wanted and t is not None:
                    result.append(got[at])
                    at += 1
                else:
                    result.append(None)
        return tuple(result)

    @staticmethod
    def vmap(info, in_dims, calls, concurrent, *tensors):
        parts = _split(tensors, [c.n_flat for c in calls])
        dims = _split(in_dims[2:], [c.n_flat for c in calls])
        V = info.batch_size
        weights_batched = any(
            d is not None for c, ds in zip(calls, dims) for d in ds[1 + c.n_state :]
        )
        if weights_batched:  # each copy its own weights: one call per copy
            return _vmap_loop(SequenceFunction, (calls, concurrent), tensors, in_dims[2:], V)
        # the copies share the weights: fold them into the batch, one call for all
        folded_calls, flat = [], []
        for c, p, ds in zip(calls, parts, dims):
            x = _batched_first(p[0], ds[0], V)  # (V, T, B, I)
            T, B = x.shape[1:3]
            flat.append(x.transpose(0, 1).reshape(T, V * B, -1))
            for s, d in zip(p[1 : 1 + c.n_state], ds[1 : 1 + c.n_state]):
                s = _batched_first(s, d, V)  # (V, B, ·)
                flat.append(s.reshape(V * B, -1))
            flat.extend(p[1 + c.n_state :])
            folded_calls.append(c.folded(V))
        outputs = SequenceFunction.apply(tuple(folded_calls), concurrent, *flat)
        result, out_dims = [], []
        for c, o in zip(calls, _split(outputs, [c.n_out for c in calls])):
            for j, t in enumerate(o):
                if 1 <= j < 1 + c.n_state:  # a final state (V·B, ·)
                    result.append(t.view(V, -1, *t.shape[1:]))
                    out_dims.append(0)
                else:  # (T, V·B, ·)
                    result.append(t.view(t.size(0), V, -1, *t.shape[2:]))
                    out_dims.append(1)
        return tuple(result), tuple(out_dims)


def _kernel_forward(call: Call, flat: list) -> tuple:
    x, state, weights = call.unflatten(flat)
    out, final, saved = call.kernel.forward(call, x, state, weights)
    assert len(saved) == call.kernel.n_saved
    return (out, *final, *saved)


def _kernel_backward(call: Call, needs: tuple, flat: list) -> tuple:
    """The kernel's backward on one call's (inputs, outputs, output gradients); the needed
    gradients, in flat order."""
    n_in, n_out, k = call.n_flat, call.n_out, 1 + call.n_state
    ins, outs, gouts = flat[:n_in], flat[n_in : n_in + n_out], flat[n_in + n_out :]
    x, state, weights = call.unflatten(ins)
    got = call.kernel.backward(
        call,
        x,
        state,
        weights,
        outs[0],
        tuple(outs[1:k]),
        tuple(outs[k:]),
        gouts[0],
        tuple(gouts[1:k]),
        call.unflatten(needs),
    )
    dx, dstate, dw = got
    grads = call.flatten(dx, dstate, dw)
    result = []
    for t, g, wanted in zip(ins, grads, needs):
        if wanted and t is not None:
            if g is None:
                raise RuntimeError(f"{type(call.kernel).__name__}.backward returned no gradient")
            result.append(g)
    return tuple(result)


class SequenceBackward(torch.autograd.Function):
    """The fused backward of :class:`SequenceFunction` as a Function of its own, so that the
    gradient it returns has a graph: differentiating it again (double backward) runs the
    reference twin's second derivative, exact.

    Arguments per call: the call's flat inputs, its outputs (detached) and saved tensors, and
    the gradients of its output and final state.  Returns the needed input gradients.
    """

    @staticmethod
    @presigned
    @no_autocast
    def forward(calls, needs, concurrent, *tensors):
        sizes = [c.n_flat + c.n_out + 1 + c.n_state for c in calls]
        runs = [
            functools.partial(_kernel_backward, c, n, [_contiguous(t) for t in p])
            for c, n, p in zip(calls, needs, _split(tensors, sizes))
        ]
        return tuple(g for got in _together(runs, concurrent) for g in got)

    @staticmethod
    def setup_context(ctx, inputs, output):
        calls, needs, _, *tensors = inputs
        ctx.calls, ctx.needs = calls, needs
        ctx.set_materialize_grads(False)
        sizes = [c.n_flat + c.n_out + 1 + c.n_state for c in calls]
        keep = []
        for c, p in zip(calls, _split(tensors, sizes)):
            keep += [*p[: c.n_flat], *p[c.n_flat + c.n_out :]]  # inputs, output gradients
        ctx.save_for_backward(*keep)

    @staticmethod
    def backward(ctx, *ggrads):
        calls, needs = ctx.calls, ctx.needs
        kept = _split(ctx.saved_tensors, [c.n_flat + 1 + c.n_state for c in calls])
        sizes = [c.n_flat + c.n_out + 1 + c.n_state for c in calls]
        wanted = _split(ctx.needs_input_grad[3:], sizes)
        counts = [sum(1 for t, w in zip(k, n) if w and t is not None) for k, n in zip(kept, needs)]
        result: list = [None, None, None]
        for c, n, k, w, gg in zip(calls, needs, kept, wanted, _split(ggrads, counts)):
            w = (*w[: c.n_flat], *w[c.n_flat + c.n_out :])
            got = reference_second_order(c, n, k, w, gg)
            result += [*got[: c.n_flat], *([None] * c.n_out), *got[c.n_flat :]]
        return tuple(result)

    @staticmethod
    def vmap(info, in_dims, calls, needs, concurrent, *tensors):
        return _vmap_loop(
            SequenceBackward, (calls, needs, concurrent), tensors, in_dims[3:], info.batch_size
        )


def reference_second_order(call, needs, kept, wanted, ggrads) -> list:
    """The vector-Jacobian product of the first-order gradients, exact, from the reference
    twin (:func:`carousel.backends.reference_sequence`): the forward is recomputed with
    autograd and differentiated twice.

    ``kept`` = the call's flat inputs, then the gradients of its output and final state;
    ``needs`` which inputs the first-order gradients were taken for, ``ggrads`` the
    gradients of those, ``wanted`` which of ``kept`` need theirs.  Returns one entry per
    ``kept`` (None where not wanted).  When the caller's graph asks for more (a third
    derivative: grad mode on), it runs through ``torch.func.vjp``, whose result stays
    differentiable; otherwise through a local graph on detached copies, which is faster.
    """
    n_in = call.n_flat
    first_for = [j for j in range(n_in) if needs[j] and kept[j] is not None]
    live = [j for j, g in zip(first_for, ggrads) if g is not None]
    ggrads = [g for g in ggrads if g is not None]
    wanted_at = [j for j, w in enumerate(wanted) if w and kept[j] is not None]
    result = [None] * len(kept)
    if not live or not wanted_at:
        return result
    with torch.autocast("cpu", enabled=False):  # the exact second derivative, in x's dtype
        if torch.is_grad_enabled():
            got = _second_order_func(call, kept, first_for, live, wanted_at, ggrads)
        else:
            got = _second_order_local(call, kept, first_for, live, wanted_at, ggrads)
    for j, g in zip(wanted_at, got):
        result[j] = g
    return result


def _reference(call: Call, flat: Sequence) -> tuple:
    from carousel.backends import reference_sequence

    x, state, weights = call.unflatten(flat)
    out, final = reference_sequence(
        call.cell, x, state, weights, call.lengths, call.reverse, masks=call.masks
    )
    return (out, *final)


def _second_order_local(call, kept, first_for, live, wanted_at, ggrads) -> tuple:
    n_in = call.n_flat
    with torch.enable_grad():
        local = [None if t is None else t.detach().requires_grad_() for t in kept]
        outputs = _reference(call, local[:n_in])
        first = torch.autograd.grad(
            outputs, [local[j] for j in live], local[n_in:], create_graph=True, allow_unused=True
        )
        pairs = [(f, g) for f, g in zip(first, ggrads) if f is not None and f.requires_grad]
        if not pairs:
            return (None,) * len(wanted_at)
        got = torch.autograd.grad(
            [f for f, _ in pairs],
            [local[j] for j in wanted_at],
            [g for _, g in pairs],
            allow_unused=True,
        )
    return got


def _second_order_func(call, kept, first_for, live, wanted_at, ggrads) -> tuple:
    n_in = call.n_flat

    def first_order(*primals):
        full = list(kept)
        for j, p in zip(wanted_at, primals):
            full[j] = p

        def forward(*diff):
            flat = list(full[:n_in])
            for j, d in zip(live, diff):
                flat[j] = d
            return _reference(call, flat)

        _, vjp = torch.func.vjp(forward, *(full[j] for j in live))
        return vjp(tuple(full[n_in:]))

    _, vjp2 = torch.func.vjp(first_order, *(kept[j] for j in wanted_at))
    return vjp2(tuple(ggrads))


def _legacy_batched(t: Tensor | None) -> bool:
    """Whether ``t`` is a batched tensor of torch's legacy vmap (``torch._vmap_internals``,
    which ``gradcheck(check_batched_grad=True)`` and ``autograd.grad(is_grads_batched=True)``
    use): it runs Functions without their vmap rule, so the kernels cannot see it."""
    if t is None:
        return False
    keys = str(torch._C._dispatch_keys(t))  # DispatchKey.Batched is not exposed to Python
    return "Batched" in keys.replace("(", " ").replace(")", " ").replace(",", " ").split()


def _legacy_vmap_backward(calls, ins, gouts, needs) -> list:
    """The first-order gradients for output gradients batched by the legacy vmap: through
    the reference twin's autograd, whose torch ops have that vmap's batching rules."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "carousel: a fused layer's gradient with create_graph=True under the legacy "
            "torch._vmap_internals vmap (is_grads_batched, gradgradcheck's "
            "check_batched_grad) is not supported; use torch.func (torch.vmap) instead"
        )
    result = []
    for c, i, g, n in zip(calls, ins, gouts, needs):
        with torch.enable_grad(), torch.autocast("cpu", enabled=False):
            local = [
                None if t is None else t.detach().requires_grad_(bool(w)) for t, w in zip(i, n)
            ]
            outputs = _reference(c, local)
            k = 1 + c.n_state
            g = [torch.zeros_like(o) if d is None else d for o, d in zip(outputs, g[:k])]
            at = [j for j, t in enumerate(local) if t is not None and n[j]]
            got = torch.autograd.grad(outputs, [local[j] for j in at], g, allow_unused=True)
        grads = [None] * len(i)
        for j, d in zip(at, got):
            grads[j] = torch.zeros_like(local[j]) if d is None else d
        result += grads
    return result


def _batched_first(t: Tensor, dim: int | None, V: int) -> Tensor:
    """``t`` with its vmapped dimension first (expanded to V copies where it has none)."""
    return t.expand(V, *t.shape) if dim is None else t.movedim(dim, 0)


def _vmap_loop(fn, head: tuple, tensors: Sequence, dims: Sequence, V: int):
    """A vmap rule that runs ``fn`` once per copy and stacks the results (dimension 0)."""
    results = []
    for v in range(V):
        args = [
            t if d is None or t is None else t.select(d, v).contiguous()
            for t, d in zip(tensors, dims)
        ]
        results.append(fn.apply(*head, *args))
    outputs = tuple(torch.stack(parts) for parts in zip(*results))
    return outputs, (0,) * len(outputs)


# ---------------------------------------------------------------------------- LSTM switches
_ACT_IN = {"tanh": 0, "sigmoid": 1, "identity": 2}
_ACT_OUT = {"tanh": 0, "identity": 1}


def lstm_flags(opt) -> tuple[int, ...]:
    """(has_i, own_f, coupled, has_o, act_in, act_out, oi, of, og, oo, G, proj) for the
    kernels; o* are the gate blocks' column offsets in units of H (−1 when absent), proj
    whether h_t is projected (proj_size > 0)."""
    gates = opt.gates()
    off = {name: gates.index(name) if name in gates else -1 for name in "ifgo"}
    return (
        int(opt.input_gate),
        int("f" in gates),
        int(opt.coupled),
        int(opt.output_gate),
        _ACT_IN[opt.input_activation],
        _ACT_OUT[opt.output_activation],
        off["i"],
        off["f"],
        off["g"],
        off["o"],
        len(gates),
        int(opt.proj_size > 0),
    )
