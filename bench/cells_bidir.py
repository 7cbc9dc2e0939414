"""Bidirectional layers: both directions concurrently (kernels.pair) against one after the other.

Same process, alternating runs of the same layer with ``carousel.kernels.pair.ENABLED`` on and
off; prints the fastest (``--stat min``) or median ms of a training step (forward + backward of
``output.sum()``) or of inference, and the ratio sequential/concurrent (> 1: concurrency pays).

    python bench/cells_bidir.py --cells lstm gru --hidden 128 256 --batch 1 16
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import carousel
from carousel.kernels import pair


def run(layer, x, mode: str) -> None:
    if mode == "train":
        out, _ = layer(x)
        out.sum().backward()
    else:
        with torch.no_grad():
            layer(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru", "rnn"])
    parser.add_argument("--hidden", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--modes", nargs="+", default=["train", "infer"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--stat", choices=["median", "min"], default="min")
    args = parser.parse_args()
    stat = statistics.median if args.stat == "median" else min
    print(
        f"# {torch.get_num_threads()} threads, T = {args.steps}, float32, one bidirectional "
        f"layer, input = hidden, {args.stat} of {args.repeats} alternating runs; load average "
        + "{:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())
    )
    print("| cell | mode | H | B | concurrent ms | sequential ms | sequential/concurrent |")
    print("|---|---|---|---|---|---|---|")
    for name in args.cells:
        for mode in args.modes:
            for H in args.hidden:
                for B in args.batch:
                    torch.manual_seed(0)
                    layer = carousel.make_layer(name, H, H, bidirectional=True)
                    x = torch.randn(args.steps, B, H)
                    times: dict[bool, list[float]] = {True: [], False: []}
                    for i in range(args.repeats + 2):
                        for enabled in (True, False):
                            pair.ENABLED = enabled
                            start = time.perf_counter()
                            run(layer, x, mode)
                            if i >= 2:  # two warm-up rounds
                                times[enabled].append((time.perf_counter() - start) * 1e3)
                    pair.ENABLED = False
                    on, off = stat(times[True]), stat(times[False])
                    print(
                        f"| {name} | {mode} | {H} | {B} | {on:.2f} | {off:.2f} | {off / on:.2f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
