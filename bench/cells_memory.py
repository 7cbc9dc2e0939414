"""Peak memory of one LSTM training step, carousel against torch.nn.LSTM.

Runs each side in a fresh process (one thread, T = 100, input = hidden) and prints how much
the process's peak resident memory (``ru_maxrss``) grew during one training step, after a
warm-up on a tiny input.  Rough, but both sides are measured the same way.

    python bench/cells_memory.py --hidden 512 --batch 64
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys

import torch

import carousel


def one_step(which: str, H: int, B: int) -> None:
    torch.set_num_threads(1)
    make = (
        (lambda h: carousel.LSTM(h, h)) if which == "carousel" else (lambda h: torch.nn.LSTM(h, h))
    )
    make(4)(torch.randn(2, 1, 4))[0].sum().backward()  # loads / compiles the kernels
    x = torch.randn(100, B, H)
    layer = make(H)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out, _ = layer(x)
    out.sum().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"{which:8s} H{H} B{B}: peak RSS growth of one training step {(peak - base) / 1024:.1f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--side", choices=["carousel", "torch"], default=None, help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.side:
        one_step(args.side, args.hidden, args.batch)
        return
    for side in ("carousel", "torch"):
        cmd = [sys.executable, __file__, "--hidden", str(args.hidden), "--batch", str(args.batch)]
        subprocess.run([*cmd, "--side", side], check=True)


if __name__ == "__main__":
    main()
