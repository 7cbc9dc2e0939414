"""The native LSTM-family kernel (``backend="native"``): C++ built by ``make install``.

The derivation opens ``native.cpp`` (the same lines as ``docs/bptt.md``, tags (F1)…(F7),
(B1)…(B10)); the kernel follows it line by line with the cells' symbols (s is the internal
state).  Per step, one pass: a register-blocked micro-kernel computes W_hh h_{t−1} for a tile
of gate columns — all G gates of a block of hidden units — and applies the gates and the
state update to that tile while it is in registers; the blocks are split between the threads
of torch's own OpenMP team (the library is built with ``-fopenmp`` and binds to the libgomp
torch loaded; :func:`set_openmp` ``(False)`` and a forked child use the library's own pthread
pool) with one spin barrier per step.  W_hh is packed once per call into the micro-kernel's
panels (the backward reuses the forward's; inside :func:`frozen_weights`, a sampler calling
one step at a time, they are cached while the weight is unchanged).  The input's share of
every gate, and the products of (B10), stay single large products over the whole sequence
(torch).

:class:`NativeLSTMKernel` is a :class:`carousel.kernels.Kernel`: the autograd around it is
the one every fused kernel shares (:func:`carousel.kernels.common.run_sequence`: first-order
gradients from the hand-derived backward here, exact higher-order gradients from the
reference twin, torch.func's setup_context and vmap rules).  A layer with a projection
(proj_size) or under bfloat16 autocast goes to the numba kernels (:func:`served_natively`).

The shared library is built by ``python -m carousel.kernels.build`` (``make install`` runs
it): plain C++17 compiled by g++ twice, for AVX2 + FMA and for AVX-512, loaded with ctypes —
no torch headers, so the build takes seconds and the first call costs only ``dlopen``.  At
load the AVX2 build asks the CPU whether it has AVX-512 (F, VL, BW, DQ) and the wider build
is used where it does (``CAROUSEL_NATIVE_ISA=avx2`` forces the narrow one).  Where the
library is missing or cannot load, one warning, and ``backend="auto"`` runs the numba kernels
(``backend="fused"``); ``CAROUSEL_NATIVE=0`` in the environment asks for that, silently.

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

from carousel.backends import LayerWeights
from carousel.cells import CellOptions
from carousel.kernels.common import (
    Order,
    bf16_wanted,
    flat_weight_grads,
    input_products,
    lstm_flags,
    run_sequence,
)

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "native.cpp"
#: (name, g++ flags) of each build; the first is the baseline every x86-64 CPU we serve has
BUILDS = (
    ("avx2", ("-mavx2", "-mfma", "-DVB=32")),
    ("avx512", ("-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mfma", "-DVB=64")),
)
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-pthread", "-fopenmp")


def disabled_by_environment() -> bool:
    """``CAROUSEL_NATIVE=0``: the numba kernels serve even where the library is built."""
    return os.environ.get("CAROUSEL_NATIVE", "").strip() == "0"


#: True: never load the library, the numba kernels serve (``CAROUSEL_NATIVE=0`` in the
#: environment sets it: how the tests, and a user, run the fallback on a machine that built it)
DISABLED = disabled_by_environment()

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
    if DISABLED:  # asked for: no warning
        _failure = "disabled (CAROUSEL_NATIVE=0, or carousel.kernels.native.DISABLED)"
        return
    try:
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


def openmp() -> bool:
    """Whether calls run on torch's OpenMP team (the library was built with ``-fopenmp`` and
    binds to the libgomp torch loaded) rather than on the library's own pthread pool."""
    return _lib is not None and bool(_lib.carousel_openmp())


def set_openmp(on: bool) -> None:
    """Send calls to torch's OpenMP team (the default) or, ``False``, to the library's own
    pthread pool: for the benchmark's comparison of the two."""
    if _lib is not None:
        _lib.carousel_set_openmp(int(bool(on)))


def isa() -> str | None:
    """``"avx2"`` or ``"avx512"``: the build that serves, or ``None``."""
    _load()
    return _isa


#: the smallest batch·hidden product where the native kernel is the one ``auto`` picks;
#: measured against the numba kernels (BENCHMARKS.md), every point of the grid wins
MIN_WORK = 0


def supports(cell: CellOptions, x: Tensor) -> bool:
    """CPU float32/float64 LSTM-family layers, when the library loaded (what it does not run
    itself, :func:`native_sequence` hands to the numba kernels: :func:`served_natively`)."""
    if cell.family != "lstm" or x.device.type != "cpu":
        return False
    return x.dtype in (torch.float32, torch.float64) and available()


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
    has_i, own_f, coupled, has_o, act_in, act_out, oi, of, og, oo, G, _ = flags  # no proj
    perm, lens, nlive = order.arrays()  # numpy views: under torch.func the order's tensors
    # are wrappers without storage of their own (the numba kernels read them the same way)
    a = _Args(
        T, B, H, G, has_i, own_f, coupled, has_o, act_in, act_out, int(store), int(reverse),
        oi, of, og, oo, threads(),
    )  # fmt: skip
    a.perm, a.lengths, a.nlive = perm.ctypes.data, lens.ctypes.data, nlive.ctypes.data
    if PROFILE is not None:
        if PROFILE.shape[0] < a.threads:
            raise ValueError(f"PROFILE needs {a.threads} rows; has {PROFILE.shape[0]}")
        a.prof = PROFILE.data_ptr()
    return a


def _peep_rows(peep: dict, H: int, dtype: torch.dtype) -> Tensor:
    """The (3, H) rows p_i, p_f, p_o the kernel reads, zeros where a variant has none (the
    kernel only reads them, so a variant without peepholes shares one zero tensor a size)."""
    if not peep:
        key = (H, dtype)
        if key not in _NO_PEEPHOLES:
            _NO_PEEPHOLES[key] = torch.zeros(3, H, dtype=dtype)
        return _NO_PEEPHOLES[key]
    rows = torch.zeros(3, H, dtype=dtype)
    for name, p in peep.items():
        rows[_PEEP_ROW[name]] = p.detach()
    return rows


_PEEP_ROW = {"ci": 0, "cf": 1, "co": 2}
_NO_PEEPHOLES: dict[tuple[int, torch.dtype], Tensor] = {}


class NativeLSTMKernel:
    """One direction of one LSTM-family layer over a whole sequence in ``native.cpp``: the
    kernel protocol of :mod:`carousel.kernels.common`, whose shared autograd (first-order
    gradients from :meth:`backward`, exact higher orders from the reference twin, torch.func)
    wraps it exactly as it wraps the numba kernels.  It serves layers without a projection
    outside bfloat16 autocast; :func:`native_sequence` sends the rest to the numba kernels."""

    #: saved for the backward besides inputs and outputs: the gates' activations, s_t
    n_saved = 2

    @staticmethod
    def forward(call, x, state, weights):
        """(F1)–(F7) over the sequence: out (T, B, H), (h_n, c_n), (gates, s)."""
        h0, c0 = state
        w = weights
        T, B, _ = x.shape
        GH, H = w.w_hh.shape
        G = GH // H
        dtype = x.dtype
        order = call.order
        bias = w.b_ih if w.b_hh is None else (w.b_hh if w.b_ih is None else w.b_ih + w.b_hh)
        with _clock("input product"):
            gx = input_products(x.reshape(T * B, -1), w.w_ih, bias, False).view(T, B, GH)  # (F1)
        peep = _peep_rows(w.peep, H, dtype)
        h = order.sort(h0)
        c = order.sort(c0)
        out = order.buffer(T, B, H, dtype=dtype)
        cs = torch.empty(T, B, H, dtype=dtype)  # written only with call.store
        hbuf = torch.empty(2, B, H, dtype=dtype)
        with _clock("pack"):
            wf, wb = panels(w.w_hh, G)
        a = _args(lstm_flags(call.cell), order, T, B, H, call.reverse, call.store)
        a.wf, a.wb, a.peep = wf.data_ptr(), wb.data_ptr(), peep.data_ptr()
        a.gx, a.h, a.c, a.out, a.cs, a.hbuf = (
            gx.data_ptr(), h.data_ptr(), c.data_ptr(), out.data_ptr(), cs.data_ptr(),
            hbuf.data_ptr(),
        )  # fmt: skip
        with _clock("forward kernel"):
            fail = getattr(_lib, f"carousel_lstm_forward_{_suffix(dtype)}")(ctypes.byref(a))
        if fail:
            raise ValueError(f"the native kernel takes 1 to 4 gate blocks; got {G}")
        return out, (order.unsort(h), order.unsort(c)), (gx, cs)

    @staticmethod
    def backward(call, x, state, weights, out, final, saved, dout, dfinal, needs):
        """(B1)–(B9) in ``native.cpp``, then the products of (B10) over all steps."""
        h0, c0 = state
        w = weights
        gates, cs = saved
        order = call.order
        T, B, _ = x.shape
        GH, H = w.w_hh.shape
        G = GH // H
        dtype = x.dtype
        dh = order.sort(dfinal[0])
        dc = order.sort(dfinal[1])
        dA = order.buffer(T, B, GH, dtype=dtype)
        hprev = order.buffer(T, B, H, dtype=dtype)
        dpeep = torch.zeros(3, H, dtype=dtype)
        peep = _peep_rows(w.peep, H, dtype)
        dout = dout.contiguous()
        h0c, c0c = h0.detach().contiguous(), c0.detach().contiguous()
        with _clock("pack"):
            wf, wb = panels(w.w_hh, G)  # packed afresh: reusing the forward's was not reentrant
        a = _args(lstm_flags(call.cell), order, T, B, H, call.reverse, True)
        a.wf, a.wb, a.peep = wf.data_ptr(), wb.data_ptr(), peep.data_ptr()
        a.gx, a.out, a.cs = gates.data_ptr(), out.data_ptr(), cs.data_ptr()
        a.h0, a.c0, a.dout, a.dh, a.dc = (
            h0c.data_ptr(), c0c.data_ptr(), dout.data_ptr(), dh.data_ptr(), dc.data_ptr()
        )  # fmt: skip
        a.dA, a.hprev, a.dpeep = dA.data_ptr(), hprev.data_ptr(), dpeep.data_ptr()
        with _clock("backward kernel"):
            getattr(_lib, f"carousel_lstm_backward_{_suffix(dtype)}")(ctypes.byref(a))
        nx, _, nw = needs
        with _clock("weight gradients"):
            dx, dw_ih, dw_hh, db = flat_weight_grads(
                dA, x, hprev, w.w_ih, (nx, nw.w_ih, nw.w_hh, nw.b_ih or nw.b_hh)
            )  # (B10)
        grads = LayerWeights(
            dw_ih,
            dw_hh,
            db if nw.b_ih else None,
            (db.clone() if nw.b_ih else db) if nw.b_hh else None,  # no shared .grad
            {name: dpeep[_PEEP_ROW[name]] for name in w.peep},
        )
        return dx, (order.unsort(dh), order.unsort(dc)), grads


KERNEL = NativeLSTMKernel()


def served_natively(x: Tensor, weights, masks=None) -> bool:
    """Whether :func:`native_sequence` runs a layer in ``native.cpp``: not with a projection
    (proj_size; (F8), (P1), (P2) are the numba kernel's), nor with layer norm (the weights'
    ``ln``), nor under bfloat16 autocast (the numba kernels' bfloat16 products), nor with the
    regularisers' masks (zoneout, recurrent dropout: :mod:`carousel.cells.masks`); those go to
    the numba kernels.  (The backend declares no features, so ``auto`` sends calls with masks
    or layer norm to ``"fused"`` directly; the check here is for a direct call.)"""
    plain = weights.w_hr is None and not getattr(weights, "ln", None) and masks is None
    return plain and not bf16_wanted(x)


def native_sequence(cell, x, state, weights, lengths, reverse, masks=None):
    """Run one direction of one LSTM-family layer with the native kernel, through the shared
    autograd of :func:`carousel.kernels.common.run_sequence`; what it does not serve
    (:func:`served_natively`) runs the numba kernels (the reference path where they cannot
    load)."""
    _load()
    if not served_natively(x, weights, masks):
        from carousel import kernels
        from carousel.backends import reference_sequence

        run = kernels.fused_sequence if kernels.supports(cell, x) else reference_sequence
        kw = {} if masks is None else {"masks": masks}
        return run(cell, x, state, weights, lengths, reverse, **kw)
    return run_sequence(KERNEL, cell, x, state, weights, lengths, reverse)
