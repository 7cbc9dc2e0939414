"""Time carousel's layers against their anchors, in the same process, alternating runs.

One point = one layer (one direction, one layer, input = hidden = H) over T steps of a batch of
B, as a training step (forward + backward of ``output.sum()``) or as inference (forward under
``torch.no_grad``).  Each point warms both sides up, then alternates carousel and the anchor
``--repeats`` times and prints the median milliseconds (``--stat min``: the fastest run, the
robust figure on a shared machine, where preemption only ever adds time), the ratio
anchor/carousel (> 1: carousel is faster) and carousel's GFLOP/s (the forward's matrix
products, 3× for a training step).

Anchors: ``lstm``, ``gru`` and ``rnn`` are timed against torch.nn.LSTM / GRU / RNN; the other
LSTM variants against carousel's own ``lstm`` (the target: every variant within 1.15× of it).
``--loop`` adds, for every cell, the reference backend (a Python loop over the reference step,
autograd for the backward) and the ratio loop/carousel.

``--bf16`` times carousel under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (the fused
kernels' bfloat16 matrix products, float32 state) against carousel's own float32 run of the
same cell (the target: ≥ 1.5× at B ≥ 16, H ≥ 256), and adds, for ``lstm``/``gru``/``rnn``,
torch.nn's layer under the same autocast and the ratio torch-bf16/carousel-bf16.

Every table names the CPU model and its vector features (AVX2, FMA, AVX-512, AMX ...),
which native build serves, and the machine's own float32 GEMM peak measured in the same run
(a 2048³ product through torch's MKL and through numpy's OpenBLAS, the higher one); "of
peak" is each point's GFLOP/s as a fraction of it.  Where the native kernel serves a cell
(``backend`` column), the numba kernels (``backend="fused"``) are timed too, alternating
with the others, and "numba/carousel" says how the two compare.  After the table, a
per-step profile of the native kernel's training step at ``--profile`` points (default H128
B1 and H512 B64): input product, packing, the forward and backward kernels split into
recurrent product, cell (elementwise) and barrier waits by TSC ticks, the weight-gradient
products, and the rest.  A contender that crashes on this CPU (torch's oneDNN bfloat16
LSTM without AVX-512) is printed as "unavailable on this CPU" and the run goes on.

``--proj P`` gives the LSTM cells a projection (``proj_size=P``, Sak et al. 2014) and times
``lstm`` against torch.nn.LSTM(H, H, proj_size=P), the other variants against carousel's
``lstm`` with the same projection.

With ``--output FILE`` (``make bench`` writes BENCHMARKS.md) the table, the command, the
machine and its load average replace the ``## Cells`` section of FILE.

    python bench/cells.py --cells lstm gru --hidden 128 256 --batch 1 16 --modes train
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import numba
import torch

import carousel

TORCH_ANCHORS = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
SECTION = "## Cells"


def run(layer: torch.nn.Module, x: torch.Tensor, mode: str, bf16: bool = False) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        if mode == "train":
            out, _ = layer(x)
        else:
            with torch.no_grad():
                layer(x)
    if mode == "train":
        out.float().sum().backward()


#: the clock of every timed run: wall time, or with ``--clock cpu`` the process's CPU time —
#: on a crowded machine with ``--threads 1`` the work done, without the time spent preempted
CLOCK = time.perf_counter


def time_alternating(layers, x: torch.Tensor, mode: str, repeats: int, stat) -> list[float]:
    """``stat`` (median or min) of each layer's ms, after two warm-up runs, in alternation;
    ``layers`` are (layer, under bf16 autocast) pairs.  A contender that raises (torch's
    oneDNN bfloat16 LSTM on a CPU without AVX-512) is NaN: "unavailable on this CPU"."""
    live = []
    for layer, bf16 in layers:
        try:
            for _ in range(2):
                run(layer, x, mode, bf16)
            live.append(True)
        except RuntimeError:
            live.append(False)
    times: list[list[float]] = [[] for _ in layers]
    for _ in range(repeats):
        for (layer, bf16), ts, ok in zip(layers, times, live):
            if not ok:
                continue
            start = CLOCK()
            run(layer, x, mode, bf16)
            ts.append((CLOCK() - start) * 1e3)
    return [stat(ts) if ts else float("nan") for ts in times]


def ms_text(ms: float) -> str:
    return "unavailable on this CPU" if math.isnan(ms) else f"{ms:.2f}"


def ratio_text(a: float, b: float) -> str:
    return "–" if math.isnan(a) or math.isnan(b) else f"{a / b:.2f}"


def profile(name: str, H: int, B: int, T: int, repeats: int) -> str:
    """Where a native training step's time goes, at one point: Python-side parts (input
    product, packing, the two kernel calls, the weight-gradient products of (B10), the rest)
    and, inside the kernels, each phase's share of thread 0's ticks."""
    from carousel.kernels import native

    if not native.available():
        return f"(no profile: {native_note()})"
    layer = carousel.make_layer(name, H, H, backend="native")
    x = torch.randn(T, B, H)
    run(layer, x, "train")
    best = None  # the fastest run's parts (preemption only ever adds time)
    try:
        for _ in range(repeats):
            native.PROFILE = torch.zeros(max(1, torch.get_num_threads()), 8, dtype=torch.int64)
            native.TIMES.clear()
            start = time.perf_counter()
            run(layer, x, "train")
            took = (time.perf_counter() - start) * 1e3
            if best is None or took < best[0]:
                parts = {k: v * 1e3 for k, v in native.TIMES.items()}
                best = (took, native.PROFILE.clone(), parts)
    finally:
        native.PROFILE = None
    total, ticks, parts = best
    rest = total - sum(parts.values())
    fwd, bwd = ticks[0, :3].sum().item(), ticks[0, 3:6].sum().item()
    lines = [
        f"profile {name} H {H} B {B} T {T}, training step, fastest of {repeats}: {total:.2f} ms",
        "| part | ms | share |",
        "|---|---|---|",
    ]
    for part, ms in (*parts.items(), ("rest (autograd, Python, allocation)", rest)):
        lines.append(f"| {part} | {ms:.2f} | {ms / total:.0%} |")
        if part in ("forward kernel", "backward kernel"):
            sub = range(3) if part == "forward kernel" else range(3, 6)
            whole = fwd if part == "forward kernel" else bwd
            for q in sub:
                share = ticks[0, q].item() / whole if whole else 0.0
                lines.append(
                    f"| — {native.PHASES[q]} | {ms * share:.2f} | {ms * share / total:.0%} |"
                )
    return "\n".join(lines)


def gflops(cell: str, T: int, B: int, H: int, mode: str, ms: float, P: int = 0) -> float:
    """Matrix-product GFLOP/s: forward 2·T·B·(I + H)·G·H with I = H (with a projection
    2·T·B·((I + P)·G·H + H·P)); training counts 3×."""
    G = carousel.CELLS[cell].num_gates
    flop = 2 * T * B * ((H + (P or H)) * G * H + H * P)
    return flop * (3 if mode == "train" else 1) / (ms * 1e6)


VECTOR_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "amx_tile", "amx_bf16",
)  # fmt: skip


def cpu_model() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next(
            (ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln),
            platform.processor() or platform.machine(),
        )
    except OSError:
        return platform.processor() or platform.machine()


def vector_features() -> str:
    """The SIMD features of /proc/cpuinfo that matter to the kernels, in a fixed order."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return "unknown"
    have = [name for name in VECTOR_FLAGS if name in flags]
    return " ".join(have) if have else "none of " + " ".join(VECTOR_FLAGS)


def machine() -> str:
    return f"{cpu_model()} ({vector_features()}), {os.cpu_count()} cores"


def native_note() -> str:
    from carousel.kernels import native

    if not native.isa():
        return f"native kernels: not loaded ({native.failure()})"
    pool = "torch's OpenMP team" if native.openmp() else "own pthread pool"
    return f"native kernels: {native.isa()} on {pool}"


def gemm_peak(n: int = 2048, repeats: int = 3) -> tuple[float, str]:
    """The machine's own best float32 product in this run: GFLOP/s of an n³ product through
    torch (MKL) and through numpy (its OpenBLAS), best of ``repeats``; returns the higher and
    a note with both."""

    a, b = torch.randn(n, n), torch.randn(n, n)
    an, bn = a.numpy(), b.numpy()
    out = {}
    for name, fn in (("torch", lambda: a.mm(b)), ("numpy", lambda: an @ bn)):
        fn()
        best = min(_seconds(fn) for _ in range(repeats))
        out[name] = 2 * n**3 / best / 1e9
    note = ", ".join(f"{k} {v:.0f}" for k, v in out.items())
    return max(out.values()), f"float32 GEMM peak {n}³: {note} GFLOP/s"


def _seconds(fn) -> float:
    start = CLOCK()
    fn()
    return CLOCK() - start


def load() -> str:
    return "{:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def write_section(path: str, text: str, append: bool = False, section: str = SECTION) -> None:
    """Replace the ``section`` (``## Cells``) of ``path`` with ``text`` (or, with ``append``,
    add ``text`` without its heading at the section's end); temp file + rename."""
    try:
        with open(path, encoding="utf-8") as f:
            old = f.read()
    except FileNotFoundError:
        old = "# Benchmarks\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == section), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        tail = "".join(lines[end:])
        if append:
            body = "".join(lines[start:end]).rstrip("\n") + "\n\n"
            text = body + text.split("\n", 2)[2]
        new = "".join(lines[:start]) + text + ("\n" + tail if tail else "")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".bench-", suffix=".md")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(new)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=list(carousel.CELLS))
    parser.add_argument("--hidden", nargs="+", type=int, default=[128, 256, 512])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 16, 64])
    modes = ["train", "infer"]
    parser.add_argument("--modes", nargs="+", default=modes, choices=modes)
    parser.add_argument("--steps", type=int, default=100, help="T, time steps")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--backend", default="auto", choices=carousel.backends.backend_names())
    parser.add_argument("--loop", action="store_true", help="also time the reference loop")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--bf16", action="store_true", help="carousel under bf16 autocast vs its float32"
    )
    parser.add_argument(
        "--stat",
        default="median",
        choices=["median", "min"],
        help="min is the robust choice on a busy machine (preemption only adds time)",
    )
    parser.add_argument(
        "--proj", type=int, default=0, metavar="P", help="LSTM cells with proj_size=P"
    )
    parser.add_argument("--output", default=None, help="write the table into this file")
    parser.add_argument(
        "--append", action="store_true", help="add to the ## Cells section instead of replacing"
    )
    parser.add_argument(
        "--no-numba",
        action="store_true",
        help="skip the numba kernels' column (timed where the native kernel serves a cell)",
    )
    parser.add_argument(
        "--profile",
        nargs="*",
        default=["128x1", "512x64"],
        metavar="HxB",
        help="points of the native kernel's per-step profile (none, or no point: skip)",
    )
    parser.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="cpu: process CPU time (use with --threads 1 on a crowded machine)",
    )
    parser.add_argument(
        "--native-pool",
        default="openmp",
        choices=["openmp", "own"],
        help="the native kernel's threads: torch's OpenMP team, or its own pthread pool",
    )
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    for name in args.cells:
        if name not in carousel.CELLS:
            parser.error(f"unknown cell {name!r}; known: {', '.join(carousel.CELLS)}")
        if args.proj and carousel.CELLS[name].family != "lstm":
            parser.error(f"--proj is for LSTM cells; {name!r} has none")
    if args.proj and args.proj >= min(args.hidden):
        parser.error(f"--proj {args.proj} must be below every --hidden; got {args.hidden}")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from carousel.kernels import native

    if native.available():
        native.set_openmp(args.native_pool == "openmp")
    load_before = load()
    peak, peak_note = gemm_peak()
    head = (
        f"machine: {machine()}; torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"numba {numba.__version__}; {native_note()}; {peak_note}; T = {args.steps}, "
        f"{'bfloat16 autocast' if args.bf16 else 'float32'}, one layer, one direction, "
        f"input = hidden; backend {args.backend}; {args.stat} of {args.repeats} alternating runs"
        f"{', CPU time' if args.clock == 'cpu' else ''}"
        + (f"; projection proj_size = {args.proj} on both sides" if args.proj else "")
    )
    header = (
        "| cell | mode | H | B | carousel ms | anchor | anchor ms | anchor/carousel | GFLOP/s "
        "| of peak |"
    )
    rule = "|---|---|---|---|---|---|---|---|---|---|"
    numba_col = not args.no_numba and args.backend == "auto" and not args.bf16
    if numba_col:
        header += " backend | numba ms | numba/carousel |"
        rule += "---|---|---|"
    if args.loop:
        header += " loop ms | loop/carousel |"
        rule += "---|---|"
    if args.bf16:
        header += " torch.nn bf16 ms | torch-bf16/carousel |"
        rule += "---|---|"
    print(head)
    print(header)
    print(rule)
    rows = []
    for name in args.cells:
        family = carousel.CELLS[name].family
        for mode in args.modes:
            for H in args.hidden:
                for B in args.batch:
                    torch.manual_seed(0)
                    x = torch.randn(args.steps, B, H)
                    proj = {"proj_size": args.proj} if args.proj else {}
                    ours = carousel.make_layer(name, H, H, backend=args.backend, **proj)
                    if args.bf16:
                        anchor_name = f"carousel {name} float32"
                        anchor = carousel.make_layer(name, H, H, backend=args.backend, **proj)
                    elif name in TORCH_ANCHORS:
                        anchor_name = f"torch.nn.{family.upper()}"
                        anchor = TORCH_ANCHORS[name](H, H, **proj)
                    else:
                        anchor_name = "carousel lstm"
                        anchor = carousel.make_layer("lstm", H, H, backend=args.backend, **proj)
                    layers = [(ours, args.bf16), (anchor, False)]
                    if args.loop:
                        loop = carousel.make_layer(name, H, H, backend="reference", **proj)
                        loop.load_state_dict(ours.state_dict())
                        layers.append((loop, args.bf16))
                    if args.bf16 and name in TORCH_ANCHORS:
                        layers.append((TORCH_ANCHORS[name](H, H, **proj), True))
                    served = carousel.backends.select_backend(args.backend, ours.cell, x).name
                    if served == "native" and args.proj:  # a projection: numba's (F8)
                        served = "fused"
                    numba_here = numba_col and served == "native"
                    if numba_here:
                        fused = carousel.make_layer(name, H, H, backend="fused", **proj)
                        fused.load_state_dict(ours.state_dict())
                        layers.append((fused, False))
                    stat = statistics.median if args.stat == "median" else min
                    ms = time_alternating(layers, x, mode, args.repeats, stat)
                    rate = gflops(name, args.steps, B, H, mode, ms[0], args.proj)
                    row = (
                        f"| {name} | {mode} | {H} | {B} | {ms[0]:.2f} | {anchor_name} | "
                        f"{ms_text(ms[1])} | {ratio_text(ms[1], ms[0])} | {rate:.1f} | "
                        f"{rate / peak:.0%} |"
                    )
                    if numba_col:
                        numba_ms = ms[-1] if numba_here else float("nan")
                        row += f" {served} | {ms_text(numba_ms) if numba_here else '–'} | "
                        row += f"{ratio_text(numba_ms, ms[0])} |"
                    if args.loop:
                        row += f" {ms[2]:.2f} | {ms[2] / ms[0]:.2f} |"
                    if args.bf16:
                        tb = ms[-1] if name in TORCH_ANCHORS else float("nan")
                        row += f" {ms_text(tb)} | {ratio_text(tb, ms[0])} |"
                    print(row, flush=True)
                    rows.append(row)

    profiles = []
    lstm_cells = [n for n in args.cells if carousel.CELLS[n].family == "lstm"]
    if lstm_cells and not args.bf16:
        for point in (p for p in args.profile if p.lower() != "none"):
            H, B = (int(v) for v in point.lower().split("x"))
            profiles.append(profile(lstm_cells[0], H, B, args.steps, max(3, args.repeats // 2)))
            print(profiles[-1], flush=True)

    if args.output:
        command = "python bench/cells.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        text = (
            f"{SECTION}\n\n"
            f"Command: `{command}`\n\n"
            f"{head}.  Load average (1, 5, 15 min) before: {load_before}; after: {load()} "
            "(the machine is shared; both sides of a ratio ran in the same process, "
            "alternating, so the ratios hold better than the absolute times).\n\n"
            f"{header}\n{rule}\n" + "\n".join(rows) + "\n" + "".join(f"\n{p}\n" for p in profiles)
        )
        write_section(args.output, text, args.append)
        print(f"wrote the {SECTION!r} section of {args.output}")


if __name__ == "__main__":
    main()
