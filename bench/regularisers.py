"""Time each regulariser's fused training step against the plain fused cell, alternating runs.

One point = one layer (one direction, input = hidden = H) over T steps of a batch of B, a
training step (forward + backward of ``output.sum()``, the masks drawn inside the timed
call, as in training) or inference (forward under ``torch.no_grad`` in eval mode, where only
zoneout differs from the plain cell).  Both sides run on the same backend (``fused``: the
numba kernels, the path the regularised cells take); the ratio is option/plain (< 1.2 is the
target, issue 15).  The ``path`` column names the backend the option's layer ran on.

    python bench/regularisers.py --cells lstm --hidden 128 256 512 --batch 1 16 64

``--output FILE`` replaces the ``## Regularisers`` section of FILE with the table, the command,
the machine and its load average.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys

import numba
import torch

import carousel
from cells import load, machine, time_alternating, write_section

SECTION = "## Regularisers"
OPTIONS = {
    "zoneout_state": {"zoneout_state": 0.1},
    "zoneout_hidden": {"zoneout_hidden": 0.1},
    "recurrent_dropout": {"recurrent_dropout": 0.25},
    "update_dropout": {"update_dropout": 0.1},
    "weight_drop": {"weight_drop": 0.5},
    "all five": {
        "zoneout_state": 0.1,
        "zoneout_hidden": 0.1,
        "recurrent_dropout": 0.25,
        "update_dropout": 0.1,
        "weight_drop": 0.5,
    },
    "layer_norm": {"layer_norm": True},
}
LSTM_ONLY = {"zoneout_state", "update_dropout", "layer_norm"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=["lstm"])
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--hidden", nargs="+", type=int, default=[128, 256, 512])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 16, 64])
    modes = ["train", "infer"]
    parser.add_argument("--modes", nargs="+", default=["train"], choices=modes)
    parser.add_argument("--steps", type=int, default=100, help="T, time steps")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--backend", default="fused", choices=carousel.backends.backend_names())
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--stat", default="median", choices=["median", "min"])
    parser.add_argument("--output", default=None, help="write the table into this file")
    args = parser.parse_args()
    for name in args.cells:
        if name not in carousel.CELLS:
            parser.error(f"unknown cell {name!r}; known: {', '.join(carousel.CELLS)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = load()
    head = (
        f"machine: {machine()}; torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"numba {numba.__version__}; T = {args.steps}, float32, one layer, one direction, "
        f"input = hidden; plain side backend {args.backend!r}; {args.stat} of {args.repeats} "
        "alternating runs"
    )
    header = "| cell | option | mode | H | B | option ms | plain ms | option/plain | path |"
    rule = "|---|---|---|---|---|---|---|---|---|"
    print(head)
    print(header)
    print(rule)
    stat = statistics.median if args.stat == "median" else min
    rows = []
    for name in args.cells:
        family = carousel.CELLS[name].family
        for option in args.options:
            kw = OPTIONS[option]
            if family != "lstm" and LSTM_ONLY & set(kw):
                continue
            for mode in args.modes:
                for H in args.hidden:
                    for B in args.batch:
                        torch.manual_seed(0)
                        x = torch.randn(args.steps, B, H)
                        cell = carousel.get_cell(name, **kw)
                        with torch.no_grad():
                            masks = carousel.cells.masks.draw_masks(cell, x, H, H, True)
                        wanted = carousel.backends.needs(cell, masks)
                        try:  # the plain side's backend, or auto where that lacks the option
                            carousel.backends.select_backend(args.backend, cell, x, wanted)
                            backend = args.backend
                        except carousel.ArgumentError:
                            backend = "auto"
                        ours = carousel.make_layer(name, H, H, backend=backend, **kw)
                        plain = carousel.make_layer(name, H, H, backend=args.backend)
                        if mode == "infer":
                            ours.eval(), plain.eval()
                        with torch.no_grad():
                            wanted = carousel.backends.needs(ours.cell, ours.layer_masks(x, 0)[0])
                        path = carousel.backends.select_backend(backend, ours.cell, x, wanted).name
                        ms = time_alternating(
                            [(ours, False), (plain, False)], x, mode, args.repeats, stat
                        )
                        row = (
                            f"| {name} | {option} | {mode} | {H} | {B} | {ms[0]:.2f} | "
                            f"{ms[1]:.2f} | {ms[0] / ms[1]:.2f} | {path} |"
                        )
                        print(row, flush=True)
                        rows.append(row)
    if args.output:
        command = "python bench/regularisers.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        text = (
            f"{SECTION}\n\n"
            f"Command: `{command}`\n\n"
            f"{head}.  Load average (1, 5, 15 min) before: {load_before}; after: {load()} "
            "(the machine is shared; both sides of a ratio ran in the same process, "
            "alternating, so the ratios hold better than the absolute times).\n\n"
            f"{header}\n{rule}\n" + "\n".join(rows) + "\n"
        )
        write_section(args.output, text, section=SECTION)
        print(f"wrote the {SECTION!r} section of {args.output}")


if __name__ == "__main__":
    main()
