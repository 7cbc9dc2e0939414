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

``--proj P`` gives the LSTM cells a projection (``proj_size=P``, Sak et al. 2014) and times
``lstm`` against torch.nn.LSTM(H, H, proj_size=P), the other variants against carousel's
``lstm`` with the same projection.

With ``--output FILE`` (``make bench`` writes BENCHMARKS.md) the table, the command, the
machine and its load average replace the ``## Cells`` section of FILE.

    python bench/cells.py --cells lstm gru --hidden 128 256 --batch 1 16 --modes train
"""

from __future__ import annotations

import argparse
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


def time_alternating(layers, x: torch.Tensor, mode: str, repeats: int, stat) -> list[float]:
    """``stat`` (median or min) of each layer's ms, after two warm-up runs, in alternation;
    ``layers`` are (layer, under bf16 autocast) pairs."""
    for _ in range(2):
        for layer, bf16 in layers:
            run(layer, x, mode, bf16)
    times: list[list[float]] = [[] for _ in layers]
    for _ in range(repeats):
        for (layer, bf16), ts in zip(layers, times):
            start = time.perf_counter()
            run(layer, x, mode, bf16)
            ts.append((time.perf_counter() - start) * 1e3)
    return [stat(ts) for ts in times]


def gflops(cell: str, T: int, B: int, H: int, mode: str, ms: float, P: int = 0) -> float:
    """Matrix-product GFLOP/s: forward 2·T·B·(I + H)·G·H with I = H (with a projection
    2·T·B·((I + P)·G·H + H·P)); training counts 3×."""
    G = carousel.CELLS[cell].num_gates
    flop = 2 * T * B * ((H + (P or H)) * G * H + H * P)
    return flop * (3 if mode == "train" else 1) / (ms * 1e6)


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln),
            platform.processor(),
        )
    except OSError:
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores"


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
    args = parser.parse_args()
    for name in args.cells:
        if name not in carousel.CELLS:
            parser.error(f"unknown cell {name!r}; known: {', '.join(carousel.CELLS)}")
        if args.proj and carousel.CELLS[name].family != "lstm":
            parser.error(f"--proj is for LSTM cells; {name!r} has none")
    if args.proj and args.proj >= min(args.hidden):
        parser.error(f"--proj {args.proj} must be below every --hidden; got {args.hidden}")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = load()
    head = (
        f"machine: {machine()}; torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"numba {numba.__version__}; T = {args.steps}, "
        f"{'bfloat16 autocast' if args.bf16 else 'float32'}, one layer, one direction, "
        f"input = hidden; backend {args.backend}; {args.stat} of {args.repeats} alternating runs"
        + (f"; projection proj_size = {args.proj} on both sides" if args.proj else "")
    )
    header = (
        "| cell | mode | H | B | carousel ms | anchor | anchor ms | anchor/carousel | GFLOP/s |"
    )
    rule = "|---|---|---|---|---|---|---|---|---|"
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
                    stat = statistics.median if args.stat == "median" else min
                    ms = time_alternating(layers, x, mode, args.repeats, stat)
                    row = (
                        f"| {name} | {mode} | {H} | {B} | {ms[0]:.2f} | {anchor_name} | "
                        f"{ms[1]:.2f} | {ms[1] / ms[0]:.2f} | "
                        f"{gflops(name, args.steps, B, H, mode, ms[0], args.proj):.1f} |"
                    )
                    if args.loop:
                        row += f" {ms[2]:.2f} | {ms[2] / ms[0]:.2f} |"
                    if args.bf16:
                        tb = ms[-1] if name in TORCH_ANCHORS else float("nan")
                        row += f" {tb:.2f} | {tb / ms[0]:.2f} |"
                    print(row, flush=True)
                    rows.append(row)

    if args.output:
        command = "python bench/cells.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        text = (
            f"{SECTION}\n\n"
            f"Command: `{command}`\n\n"
            f"{head}.  Load average (1, 5, 15 min) before: {load_before}; after: {load()} "
            "(the machine is shared; both sides of a ratio ran in the same process, "
            "alternating, so the ratios hold better than the absolute times).\n\n"
            f"{header}\n{rule}\n" + "\n".join(rows) + "\n"
        )
        write_section(args.output, text, args.append)
        print(f"wrote the {SECTION!r} section of {args.output}")


if __name__ == "__main__":
    main()
