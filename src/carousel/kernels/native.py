"""The native LSTM-family kernel (``backend="native"``): C++ built by ``make install``.

The derivation opens ``native.cpp`` (the same lines as ``docs/bptt.md``, tags (F1)…(F7),
(B1)…(B10)); the kernel follows it line by line with the cells' symbols (s is the internal
state).  Per step, one pass: a register-blocked micro-kernel computes W_hh h_{t−1} for a tile
of gate columns — all G gates of a block of hidden units — and applies the gates and the
state update to that tile while it is in registers; the blocks are split between persistent
threads with one spin barrier per step.  W_hh is packed once into the micro-kernel's panels
and the panels are cached while the weight is unchanged (its ``_version``), so a sampler
calling one step at a time packs once.  The input's share of every gate, and the products
of (B10), stay single large products over the whole sequence (torch).

The shared library is built by ``python -m carousel.kernels.build`` (``make install`` runs
it): plain C++17 compiled by g++ twice, for AVX2 + FMA and for AVX-512, loaded with ctypes —
no torch headers, so the build takes seconds and the first call costs only ``dlopen``.  At
load the AVX2 build asks the CPU whether it has AVX-512 (F, VL, BW, DQ) and the wider build
is used where it does (``CAROUSEL_NATIVE_ISA=avx2`` forces the narrow one).  Where the
library is missing or cannot load, one warning, and ``backend="auto"`` runs the numba kernels
(``backend="fused"``).

Shapes follow the legend in :mod:`carousel`: T, B, I, H, G.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import time
import warnings
import weakref
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from carousel.cells import CellOptions
from carousel.kernels.common import (
    Order,
    bf16_wanted,
    flat_weight_grads,
    input_products,
    no_autocast,
)

_ACT_IN = {"tanh": 0, "sigmoid": 1, "identity": 2}
_ACT_OUT = {"tanh": 0, "identity": 1}


def lstm_flags(opt) -> tuple[int, ...]:
    """(has_i, own_f, coupled, has_o, act_in, act_out, oi, of, og, oo, G), as the numba
    kernel's (:func:`carousel.kernels.lstm.lstm_flags`, not imported: it would load numba);
    o* are the gate blocks' column offsets in units of H (−1 when absent)."""
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
    )


HERE = Path(__file__).resolve().parent
SOURCE = HERE / "native.cpp"
#: (name, g++ flags) of each build; the first is the baseline every x86-64 CPU we serve has
BUILDS = (
    ("avx2", ("-mavx2", "-mfma", "-DVB=32")),
    ("avx512", ("-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mfma", "-DVB=64")),
)
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-pthread")

#: set to True to skip loading (the tests of the fallback use it)
DISABLED = False

_lib: ctypes.CDLL | None = None
_isa: str | None = None
_failure: str | None = None
_loaded = False


def library_path(isa: str) -> Path:
    return HERE / f"_native_{isa}.so"


def source_hash() -> str:
    """The first 15 hex digits of ``native.cpp``'s sha256: a library built from other source
    (a stale build after a pull) is refused at load, not called with the wrong layout."""
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:15]


def build(quiet: bool = False) -> list[Path]:
    """Compile ``native.cpp`` once per entry of :data:`BUILDS` (in parallel); returns the
    libraries built.  Raises ``RuntimeError`` naming the compiler's complaint."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    jobs = []
    for isa, flags in BUILDS:
        target = library_path(isa)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        cmd = [cxx, *FLAGS, *flags, str(SOURCE), "-o", str(tmp)]
        cmd.insert(1, f"-DCAROUSEL_SOURCE_HASH=0x{source_hash()}ULL")
        jobs.append((target, tmp, subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)))
    built = []
    for target, tmp, proc in jobs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"{cxx} failed to build {target.name}: {err.strip()[-2000:]}")
        os.replace(tmp, target)  # a loaded library keeps its old inode
        built.append(target)
        if not quiet:
            print(f"built {target}")
    return built


def _bind(lib: ctypes.CDLL) -> None:
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.carousel_pack_size.argtypes = (i64, i64, i64)
    lib.carousel_pack_size.restype = i64
    for suffix in ("f32", "f64"):
        getattr(lib, f"carousel_pack_{suffix}").argtypes = (ptr, i64, i64, ptr, ptr, i64)
        for name in ("forward", "backward"):
            fn = getattr(lib, f"carousel_lstm_{name}_{suffix}")
            fn.argtypes = (ctypes.POINTER(_Args),)
            fn.restype = ctypes.c_int


def _load() -> None:
    global _lib, _isa, _failure, _loaded
    if _loaded:
        return
    _loaded = True
    try:
        if DISABLED:
            raise OSError("carousel.kernels.native.DISABLED is set")
        import platform

        if platform.machine().lower() not in ("x86_64", "amd64"):
            raise OSError(f"the native kernels are x86-64 only; this is {platform.machine()}")
        path = library_path("avx2")
        if not path.exists():
            raise OSError(
                f"{path.name} is not built (run `make install`, or "
                "`python -m carousel.kernels.native`)"
            )
        lib = ctypes.CDLL(str(path))
        lib.carousel_source_hash.restype = ctypes.c_uint64
        if lib.carousel_source_hash() != int(source_hash(), 16):
            raise OSError(f"{path.name} was built from another native.cpp (run `make install`)")
        if not lib.carousel_cpu_avx2():
            raise OSError("this CPU has no AVX2 + FMA")
        isa = "avx2"
        wide = library_path("avx512")
        if (
            os.environ.get("CAROUSEL_NATIVE_ISA", "") != "avx2"
            and lib.carousel_cpu_avx512()
            and wide.exists()
        ):
            lib, isa = ctypes.CDLL(str(wide)), "avx512"
            lib.carousel_source_hash.restype = ctypes.c_uint64
            if lib.carousel_source_hash() != int(source_hash(), 16):
                raise OSError(f"{wide.name} was built from another native.cpp (make install)")
        _bind(lib)
        _lib, _isa = lib, isa
    except (OSError, AttributeError) as err:
        _failure = f"{type(err).__name__}: {err}"
        warnings.warn(
            f"carousel: the native kernels could not load ({_failure}); "
            "the numba kernels serve instead",
            RuntimeWarning,
            stacklevel=3,
        )


def available() -> bool:
    """Whether the native library loaded (loads it on the first call)."""
    _load()
    return _lib is not None


def failure() -> str | None:
    """Why the native library could not load, or ``None``."""
    _load()
    return _failure


def isa() -> str | None:
    """``"avx2"`` or ``"avx512"``: the build that serves, or ``None``."""
    _load()
    return _isa


#: the smallest batch·hidden product where the native kernel is the one ``auto`` picks;
#: measured against the numba kernels (BENCHMARKS.md), every point of the grid wins
MIN_WORK = 0


def supports(cell: CellOptions, x: Tensor) -> bool:
    """CPU float32/float64 LSTM-family layers outside bfloat16 autocast (the numba kernels
    keep that path), when the library loaded."""
    if cell.family != "lstm" or x.device.type != "cpu":
        return False
    if x.dtype not in (torch.float32, torch.float64) or bf16_wanted(x):
        return False
    return available()


class _Args(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_int64)
        for name in (
            *("T", "B", "H", "G", "has_i", "own_f", "coupled", "has_o"),
            *("act_in", "act_out", "store", "rev", "oi", "of", "og", "oo", "threads"),
        )
    ] + [
        (name, ctypes.c_void_p)
        for name in (
            *("perm", "lengths", "nlive", "wf", "wb", "peep"),
            *("gx", "h", "c", "out", "cs", "hbuf"),
            *("h0", "c0", "dout", "dh", "dc", "dA", "hprev", "dpeep", "prof"),
        )
    ]


#: set to an int64 tensor of (threads, 8) zeros to have every call add the TSC ticks of its
#: phases per thread: forward product, forward cell (F2)–(F7), forward barrier, backward cell
#: (B1)–(B8), backward barrier, backward product (B9), -, total (``bench/cells.py --profile``)
PROFILE: Tensor | None = None
PHASES = ("fwd product", "fwd cell", "fwd sync", "bwd cell", "bwd sync", "bwd product")
#: with :data:`PROFILE`, seconds of each part of a call as Python sees it, added up
TIMES: dict[str, float] = {}


class _clock:
    """Adds the seconds of a ``with`` block to ``TIMES[name]`` while profiling."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self):
        self.start = time.perf_counter() if PROFILE is not None else 0.0

    def __exit__(self, *exc):
        if PROFILE is not None:
            TIMES[self.name] = TIMES.get(self.name, 0.0) + time.perf_counter() - self.start


def _p(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _suffix(dtype: torch.dtype) -> str:
    return "f32" if dtype == torch.float32 else "f64"


def threads() -> int:
    """How many threads a call splits the gate columns between: torch's count."""
    return max(1, torch.get_num_threads())


# id(weight) -> (weakref, _version, data_ptr, G, threads, (wf, wb))
_PANELS: dict[int, tuple] = {}


_frozen = 0


@contextlib.contextmanager
def frozen_weights():
    """Inside, the packed panels of each W_hh are reused from call to call while the weight
    object, its ``_version`` and its storage are unchanged: for a sampler running one step
    per call (``carousel sample``), where packing would cost more than the step.  Outside,
    every call packs afresh (about 1 % of a training step), because a weight written through
    ``.data`` — gradcheck's perturbations, hand-written updates — bumps no version."""
    global _frozen
    _frozen += 1
    try:
        yield
    finally:
        _frozen -= 1
        if not _frozen:
            _PANELS.clear()


def panels(w_hh: Tensor, G: int) -> tuple[Tensor, Tensor]:
    """W_hh (G·H, H) packed into the forward and backward panels (``native.cpp``'s
    ``pack``); cached only inside :func:`frozen_weights`."""
    w = w_hh.detach()
    key = id(w_hh)
    hit = _PANELS.get(key)
    cache = _frozen > 0
    if (
        cache
        and hit is not None
        and hit[0]() is w_hh
        and hit[1] == w_hh._version
        and hit[2] == w.data_ptr()
        and hit[3] == G
    ):
        return hit[5]
    H = w.size(1)
    w = w.contiguous()
    size = _lib.carousel_pack_size(G, H, w.element_size())
    wf = torch.empty(size, dtype=w.dtype)
    wb = torch.empty(size, dtype=w.dtype)
    getattr(_lib, f"carousel_pack_{_suffix(w.dtype)}")(
        w.data_ptr(), G, H, wf.data_ptr(), wb.data_ptr(), threads()
    )
    if len(_PANELS) > 64:
        for k in [k for k, v in _PANELS.items() if v[0]() is None] or list(_PANELS)[:32]:
            _PANELS.pop(k, None)
    if not cache:
        return wf, wb
    try:
        _PANELS[key] = (weakref.ref(w_hh), w_hh._version, w_hh.data_ptr(), G, 0, (wf, wb))
    except TypeError:  # an object without weak references: do not cache
        pass
    return wf, wb


def _args(flags, order: Order, T: int, B: int, H: int, reverse: bool, store: bool) -> _Args:
    has_i, own_f, coupled, has_o, act_in, act_out, oi, of, og, oo, G = flags
    perm, lens, nlive = order.perm, order.lengths, order.nlive
    a = _Args(
        T, B, H, G, has_i, own_f, coupled, has_o, act_in, act_out, int(store), int(reverse),
        oi, of, og, oo, threads(),
    )  # fmt: skip
    a.perm, a.lengths, a.nlive = perm.data_ptr(), lens.data_ptr(), nlive.data_ptr()
    if PROFILE is not None:
        if PROFILE.shape[0] < a.threads:
            raise ValueError(f"PROFILE needs {a.threads} rows; has {PROFILE.shape[0]}")
        a.prof = PROFILE.data_ptr()
    return a


def _forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, p_i, p_f, p_o, flags, lengths, reverse, store):
    """(F1)–(F7) over the sequence: out (T, B, H), h_n, c_n, and for the backward pass (with
    ``store``) the saved tensors; the body of :class:`NativeLSTMFunction`'s forward, called
    directly where no gradient is wanted (no autograd node: a sampler's one-token calls)."""
    T, B, _ = x.shape
    GH, H = w_hh.shape
    G = flags[-1]
    dtype = x.dtype
    order = Order(T, B, lengths)
    bias = b_ih if b_hh is None else (b_hh if b_ih is None else b_ih + b_hh)
    with _clock("input product"):
        gx = input_products(x.reshape(T * B, -1), w_ih, bias, False).view(T, B, GH)  # (F1)
    peep = torch.zeros(3, H, dtype=dtype)
    for row, p in enumerate((p_i, p_f, p_o)):
        if p is not None:
            peep[row] = p.detach()
    h = order.sort(h0)
    c = order.sort(c0)
    out = order.buffer(T, B, H, dtype=dtype)
    cs = torch.empty(T, B, H, dtype=dtype) if store else None
    hbuf = torch.empty(2, B, H, dtype=dtype)
    with _clock("pack"):
        wf, wb = panels(w_hh, G)
    a = _args(flags, order, T, B, H, reverse, store)
    a.wf, a.wb, a.peep = wf.data_ptr(), wb.data_ptr(), peep.data_ptr()
    a.gx, a.h, a.c, a.out, a.cs, a.hbuf = (
        gx.data_ptr(), h.data_ptr(), c.data_ptr(), out.data_ptr(), _p(cs), hbuf.data_ptr()
    )  # fmt: skip
    with _clock("forward kernel"):
        fail = getattr(_lib, f"carousel_lstm_forward_{_suffix(dtype)}")(ctypes.byref(a))
    if fail:
        raise ValueError(f"the native kernel takes 1 to 4 gate blocks; got {G}")
    return out, order.unsort(h), order.unsort(c), (order, gx, cs, peep, wf, wb)


class NativeLSTMFunction(torch.autograd.Function):
    """One direction of one LSTM-family layer over a whole sequence, in ``native.cpp``."""

    @staticmethod
    @no_autocast
    def forward(
        ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, p_i, p_f, p_o, flags, lengths, reverse, store
    ):
        out, h_n, c_n, (order, gx, cs, peep, wf, wb) = _forward(
            x, h0, c0, w_ih, w_hh, b_ih, b_hh, p_i, p_f, p_o, flags, lengths, reverse, store
        )
        if store:
            ctx.save_for_backward(x, h0, c0, w_ih, w_hh, gx, cs, out, peep)
            ctx.panels = (wf, wb)
        ctx.order, ctx.flags, ctx.reverse = order, flags, reverse
        ctx.has_bias = (b_ih is not None, b_hh is not None)
        ctx.has_peep = tuple(p is not None for p in (p_i, p_f, p_o))
        return out, h_n, c_n

    @staticmethod
    @once_differentiable
    @no_autocast
    def backward(ctx, dout, dh_n, dc_n):
        x, h0, c0, w_ih, w_hh, gates, cs, out, peep = ctx.saved_tensors
        order = ctx.order
        T, B, _ = x.shape
        GH, H = w_hh.shape
        dtype = x.dtype
        dh = order.sort(dh_n)
        dc = order.sort(dc_n)
        dA = order.buffer(T, B, GH, dtype=dtype)
        hprev = order.buffer(T, B, H, dtype=dtype)
        dpeep = torch.zeros(3, H, dtype=dtype)
        dout = dout.contiguous()
        h0c, c0c = h0.detach().contiguous(), c0.detach().contiguous()
        wf, wb = ctx.panels
        a = _args(ctx.flags, order, T, B, H, ctx.reverse, True)
        a.wf, a.wb, a.peep = wf.data_ptr(), wb.data_ptr(), peep.data_ptr()
        a.gx, a.out, a.cs = gates.data_ptr(), out.data_ptr(), cs.data_ptr()
        a.h0, a.c0, a.dout, a.dh, a.dc = (
            h0c.data_ptr(), c0c.data_ptr(), dout.data_ptr(), dh.data_ptr(), dc.data_ptr()
        )  # fmt: skip
        a.dA, a.hprev, a.dpeep = dA.data_ptr(), hprev.data_ptr(), dpeep.data_ptr()
        with _clock("backward kernel"):
            getattr(_lib, f"carousel_lstm_backward_{_suffix(dtype)}")(ctypes.byref(a))
        nd = ctx.needs_input_grad
        with _clock("weight gradients"):
            dx, dw_ih, dw_hh, db = flat_weight_grads(
                dA, x, hprev, w_ih, (nd[0], nd[3], nd[4], nd[5] or nd[6])
            )  # (B10)
        dh0 = order.unsort(dh) if nd[1] else None
        dc0 = order.unsort(dc) if nd[2] else None
        db_ih = db if ctx.has_bias[0] and nd[5] else None
        db_hh = db.clone() if ctx.has_bias[1] and nd[6] else None  # no shared .grad
        dps = [dpeep[r] if ctx.has_peep[r] and nd[7 + r] else None for r in range(3)]
        return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, *dps, None, None, None, None


def arguments(cell, x, state, weights, lengths, reverse) -> tuple:
    """The arguments of :class:`NativeLSTMFunction` for one direction of one layer."""
    h0, c0 = state
    peep = weights.peep
    tensors = (x, h0, c0, weights.w_ih, weights.w_hh, weights.b_ih, weights.b_hh, *peep.values())
    store = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    return (
        x.contiguous(),
        h0,
        c0,
        weights.w_ih,
        weights.w_hh,
        weights.b_ih,
        weights.b_hh,
        peep.get("ci"),
        peep.get("cf"),
        peep.get("co"),
        lstm_flags(cell),
        lengths,
        reverse,
        store,
    )


def native_sequence(cell, x, state, weights, lengths, reverse):
    """Run one direction of one LSTM-family layer with the native kernel."""
    _load()
    if getattr(weights, "w_hr", None) is not None:  # a projection (proj_size): not ours
        from carousel import kernels

        return kernels.fused_sequence(cell, x, state, weights, lengths, reverse)
    args = arguments(cell, x, state, weights, lengths, reverse)
    if torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):  # autograd's node (and
        # forward-mode AD's dual tensors, which require no grad) need the Function
        out, h_n, c_n = NativeLSTMFunction.apply(*args)
    else:
        out, h_n, c_n, _ = _forward(*args)
    return out, (h_n, c_n)


FUNCTION = NativeLSTMFunction
