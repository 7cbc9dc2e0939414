"""Time carousel's layers against the torch.nn anchor, in the same process, alternating runs.

One training step = forward + backward of a one-layer, input = hidden layer over T steps.
Each point warms both up, then alternates carousel and torch.nn ``--repeats`` times and prints
the median milliseconds and the ratio torch/carousel (> 1 means carousel is faster).  Cells
without a torch.nn twin (the LSTM variants) are timed against torch.nn.LSTM, the speed a
user of the standard cell gets.

    python bench/cells.py --cells lstm gru rnn --hidden 128 256 --batch 1 16 --backend reference
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import carousel

ANCHORS = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}


def train_step(layer: torch.nn.Module, x: torch.Tensor) -> None:
    out, _ = layer(x)
    out.sum().backward()


def time_pair(ours, anchor, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median ms of a training step for ``ours`` and ``anchor``, runs alternating."""
    for _ in range(2):  # warm-up
        train_step(ours, x)
        train_step(anchor, x)
    t_ours, t_anchor = [], []
    for _ in range(repeats):
        for layer, times in ((ours, t_ours), (anchor, t_anchor)):
            start = time.perf_counter()
            train_step(layer, x)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(t_ours), statistics.median(t_anchor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru", "rnn", "lstm1997"])
    parser.add_argument("--hidden", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--steps", type=int, default=100, help="T, time steps")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backend", default="auto", choices=carousel.backends.backend_names())
    args = parser.parse_args()

    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, T={args.steps}, backend={args.backend}"
    )
    print("| cell | H | B | carousel ms | torch.nn ms | ratio |")
    print("|---|---|---|---|---|---|")
    for name in args.cells:
        family = carousel.CELLS[name].family
        for H in args.hidden:
            for B in args.batch:
                torch.manual_seed(0)
                ours = carousel.make_layer(name, H, H, backend=args.backend)
                anchor = ANCHORS[family](H, H)
                x = torch.randn(args.steps, B, H)
                ms_ours, ms_anchor = time_pair(ours, anchor, x, args.repeats)
                print(
                    f"| {name} | {H} | {B} | {ms_ours:.2f} | {ms_anchor:.2f} | "
                    f"{ms_anchor / ms_ours:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
