"""MKL, the BLAS torch itself uses, called from inside numba kernels.

torch's CPU library carries Intel MKL and exports its Fortran GEMM (``sgemm_``/``dgemm_``) and
its vector math (``vsExp``/``vdExp``, ``vsTanh``/``vdTanh``, high-accuracy mode: < 1 ulp).
We hand their addresses to LLVM by name and declare them as numba external functions, so a
kernel can run the whole time loop in compiled code: per step one MKL GEMM (the same routine
behind ``torch.addmm``) and vectorised exp/tanh, with no Python between steps.  Because the
symbols are bound by name, not by address, ``cache=True`` works: the cached machine code is
linked against the addresses registered in the current process.

numba's cache checks only the caller's source file: after editing this module, delete
``src/carousel/kernels/__pycache__`` so the kernels that call it are compiled afresh.

Importing this module raises ``OSError``/``AttributeError`` when torch carries no MKL (e.g. an
ARM build); :mod:`carousel.kernels` then falls back to the reference path.
"""

from __future__ import annotations

import ctypes
import os

import llvmlite.binding as llvm
import numba
import numpy as np
import torch
from numba import types

_SYMBOLS = (
    "sgemm_",
    "dgemm_",
    "vsExp",
    "vdExp",
    "vsTanh",
    "vdTanh",
    "MKL_Set_Num_Threads_Local",
    "cblas_sgemm_pack_get_size",
    "cblas_sgemm_pack",
    "cblas_sgemm_compute",
    "cblas_gemm_bf16bf16f32",
)


def _bind() -> None:
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    lib = ctypes.CDLL(path)
    for name in _SYMBOLS:
        address = ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
        llvm.add_symbol(name, address)


_bind()

_vp = types.voidptr
_gemm_sig = types.void(_vp, _vp, _vp, _vp, _vp, _vp, _vp, _vp, _vp, _vp, _vp, _vp, _vp)
_vml_sig = types.void(types.int32, _vp, _vp)
_sgemm = types.ExternalFunction("sgemm_", _gemm_sig)
_dgemm = types.ExternalFunction("dgemm_", _gemm_sig)
_vsexp = types.ExternalFunction("vsExp", _vml_sig)
_vdexp = types.ExternalFunction("vdExp", _vml_sig)
_vstanh = types.ExternalFunction("vsTanh", _vml_sig)
_vdtanh = types.ExternalFunction("vdTanh", _vml_sig)
_set_threads_local = types.ExternalFunction("MKL_Set_Num_Threads_Local", types.int32(types.int32))
_i32, _f32 = types.int32, types.float32
_pack_size = types.ExternalFunction(
    "cblas_sgemm_pack_get_size", types.uint64(_i32, _i32, _i32, _i32)
)
_pack = types.ExternalFunction(
    "cblas_sgemm_pack",
    types.void(_i32, _i32, _i32, _i32, _i32, _i32, _f32, _vp, _i32, _vp),
)
_compute = types.ExternalFunction(
    "cblas_sgemm_compute",
    types.void(_i32, _i32, _i32, _i32, _i32, _i32, _vp, _i32, _vp, _i32, _f32, _vp, _i32),
)
_gemm_bf16 = types.ExternalFunction(
    "cblas_gemm_bf16bf16f32",
    types.void(_i32, _i32, _i32, _i32, _i32, _i32, _f32, _vp, _i32, _vp, _i32, _f32, _vp, _i32),
)
_ROW_MAJOR, _NO_TRANS, _TRANS, _PACKED, _B_MATRIX = 101, 111, 112, 151, 162

#: the ``packed`` modes of :func:`prepare_pack` / :func:`step_gemm`
PLAIN, PACKED, BF16 = 0, 1, 2

#: compile options shared by every kernel: accuracy first (no fastmath), numpy's error model
#: so the inner loops vectorise, on-disk cache, and no GIL so two directions can overlap.
JIT = {"cache": True, "error_model": "numpy", "fastmath": False, "nogil": True}
N = ord("N")
TR = ord("T")


@numba.njit(**JIT)
def gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, scratch_i, scratch_f):
    """Row-major C (m, n) = alpha·op(A) (m, k) @ op(B) (k, n) + beta·C.

    ``ta``/``tb`` are ``N`` or ``TR``; lda/ldb/ldc are row strides (elements) of the arrays
    as stored; a, b, c are arrays whose first element is the matrix's.  Row-major C is
    column-major Cᵀ = op(B)ᵀ op(A)ᵀ, so MKL is called with the operands swapped.
    ``scratch_i`` (int32, ≥ 8) and ``scratch_f`` (c's dtype, ≥ 2) hold the by-reference
    scalars Fortran wants.
    """
    if m == 0 or n == 0:
        return
    scratch_i[0] = tb  # first byte of the little-endian int32 is the character
    scratch_i[1] = ta
    scratch_i[2] = n
    scratch_i[3] = m
    scratch_i[4] = k
    scratch_i[5] = ldb
    scratch_i[6] = lda
    scratch_i[7] = ldc
    scratch_f[0] = alpha
    scratch_f[1] = beta
    si = scratch_i
    if c.itemsize == 4:
        _sgemm(
            si[0:].ctypes,
            si[1:].ctypes,
            si[2:].ctypes,
            si[3:].ctypes,
            si[4:].ctypes,
            scratch_f[0:].ctypes,
            b.ctypes,
            si[5:].ctypes,
            a.ctypes,
            si[6:].ctypes,
            scratch_f[1:].ctypes,
            c.ctypes,
            si[7:].ctypes,
        )
    else:
        _dgemm(
            si[0:].ctypes,
            si[1:].ctypes,
            si[2:].ctypes,
            si[3:].ctypes,
            si[4:].ctypes,
            scratch_f[0:].ctypes,
            b.ctypes,
            si[5:].ctypes,
            a.ctypes,
            si[6:].ctypes,
            scratch_f[1:].ctypes,
            c.ctypes,
            si[7:].ctypes,
        )


@numba.njit(**JIT)
def to_bf16(src, dst, n):
    """dst[:n] = src[:n] rounded to bfloat16 (nearest, ties to even), as uint16 bit patterns;
    src float32, dst uint16, both one-dimensional and contiguous."""
    bits = src.view(np.uint32)
    for q in range(n):
        u = bits[q]
        dst[q] = np.uint16((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> 16)


@numba.njit(**JIT)
def prepare_pack(packed, tb, m, n, k, b, ldb):
    """Ready op(B) (k, n) for every step's product over at most m rows (see :func:`step_gemm`).

    ``packed`` = PACKED (float32, every step over the same m rows): op(B) packed once by MKL
    (``cblas_sgemm_pack``), so the weight matrix is not re-packed at every step.
    ``packed`` = BF16: op(B) rounded to bfloat16, row-major (k, n), followed by room for the
    m·k bfloat16 values of a step's left operand; returned in a float32 array.
    PLAIN: a dummy.
    """
    if packed == PACKED:
        size = _pack_size(_B_MATRIX, m, n, k)
        pk = np.empty(size // 4 + 16, np.float32)
        trans = _TRANS if tb == TR else _NO_TRANS
        _pack(_ROW_MAJOR, _B_MATRIX, trans, m, n, k, np.float32(1.0), b.ctypes, ldb, pk.ctypes)
        return pk
    if packed == BF16:
        pk = np.empty((k * n + m * k) // 2 + 2, np.float32)
        wb = pk.view(np.uint16)
        bt = np.empty(k * n, np.float32)  # op(B) in float32, row-major (k, n)
        bf = b.reshape(-1)
        for kk in range(k):
            for nn in range(n):
                bt[kk * n + nn] = bf[nn * ldb + kk] if tb == TR else bf[kk * ldb + nn]
        to_bf16(bt, wb, k * n)
        return pk
    return np.empty(1, np.float32)


@numba.njit(**JIT)
def step_gemm(pk, packed, ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc, scratch_i, scratch_f):
    """Row-major C (m, n) = op(A) @ op(B) + beta·C for one step (``ta`` = N, A's rows
    contiguous with stride ``lda`` = k): from what :func:`prepare_pack` made of op(B) when
    ``packed`` is PACKED or BF16 (A is then rounded to bfloat16 too, and the product
    accumulates in float32: MKL's ``cblas_gemm_bf16bf16f32``), else through :func:`gemm`."""
    if m == 0:
        return
    if packed == PACKED:
        _compute(
            _ROW_MAJOR, _NO_TRANS, _PACKED, m, n, k, a.ctypes, lda, pk.ctypes, n,
            np.float32(beta), c.ctypes, ldc,
        )  # fmt: skip
    elif packed == BF16:
        wb = pk.view(np.uint16)
        ab = wb[k * n :]
        to_bf16(a.reshape(-1), ab, m * k)
        _gemm_bf16(
            _ROW_MAJOR, _NO_TRANS, _NO_TRANS, m, n, k, np.float32(1.0), ab.ctypes, k,
            wb.ctypes, n, np.float32(beta), c.ctypes, ldc,
        )  # fmt: skip
    else:
        gemm(ta, tb, m, n, k, 1.0, a, lda, b, ldb, beta, c, ldc, scratch_i, scratch_f)


@numba.njit(**JIT)
def mm_bf16(ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """Row-major C (m, n) = op(A) @ op(B) + beta·C with A, B bfloat16 (uint16 bit patterns)
    and C float32: MKL's ``cblas_gemm_bf16bf16f32`` (AMX where the CPU has it), on MKL's
    threads.  For the big products over all steps."""
    if m == 0 or n == 0:
        return
    _gemm_bf16(
        _ROW_MAJOR, _TRANS if ta == TR else _NO_TRANS, _TRANS if tb == TR else _NO_TRANS,
        m, n, k, np.float32(1.0), a.ctypes, lda, b.ctypes, ldb, np.float32(beta), c.ctypes, ldc,
    )  # fmt: skip


#: per-step products smaller than this many multiply-adds run on one MKL thread: waking a
#: second thread costs more than it saves there, and far more on a busy machine ...
SERIAL_STEP_MACS = 1 << 22
#: ... unless the weight matrix has this many elements or more (2 MB in float32): then every
#: step streams it from beyond one core's cache, and two cores each read half of it.
PARALLEL_WEIGHTS = 1 << 19


@numba.njit(**JIT)
def step_threads(n, m, k):
    """Set this thread's MKL threads for per-step products of n rows by an (m, k) weight
    matrix; returns the old setting for :func:`restore_threads`."""
    if n * m * k < SERIAL_STEP_MACS and m * k < PARALLEL_WEIGHTS:
        return _set_threads_local(1)
    return _set_threads_local(0)


@numba.njit(**JIT)
def restore_threads(old):
    _set_threads_local(old)


@numba.njit(**JIT)
def copy(dst, d0, src, s0, n):
    """dst[d0 : d0 + n] = src[s0 : s0 + n] for one-dimensional arrays, as a plain loop
    (numba's slice assignment checks for overlap and is slow on short rows)."""
    for k in range(n):
        dst[d0 + k] = src[s0 + k]


@numba.njit(**JIT)
def vexp(x, n):
    """x[:n] = exp(x[:n]) in place (x one-dimensional, contiguous)."""
    if n == 0:
        return
    if x.itemsize == 4:
        _vsexp(n, x.ctypes, x.ctypes)
    else:
        _vdexp(n, x.ctypes, x.ctypes)


@numba.njit(**JIT)
def vtanh(x, n):
    """x[:n] = tanh(x[:n]) in place (x one-dimensional, contiguous)."""
    if n == 0:
        return
    if x.itemsize == 4:
        _vstanh(n, x.ctypes, x.ctypes)
    else:
        _vdtanh(n, x.ctypes, x.ctypes)
