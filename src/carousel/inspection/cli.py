"""``carousel inspect RUN``: look inside a trained network.

For a character language model, ``--text FILE`` (or ``--prime TEXT --length N``: the model's
own sample) is run through the model on the reference path; the page, the figures and the
units' correlations with the text's features go to ``--out`` (default ``RUN/inspect``).
For a lag run (``carousel lag``), sequences of its task are generated from ``--seed`` and
``lag.png`` shows the state and input gate of the units the read-out uses across one of them,
beside the same picture of each ``--beside`` run (e.g. the Elman RNN on the same task).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from carousel.checkpoint import load_checkpoint
from carousel.config import set_threads

LAG_FIGURE = "lag.png"


def cmd_inspect(args: argparse.Namespace) -> int:
    from carousel.lag.train import KIND as LAG
    from carousel.lm.cli import KIND as LM

    kind = load_checkpoint(args.run)[1].get("kind")
    if kind == LM:
        if args.beside:
            raise ValueError("--beside is for lag runs; a language model is inspected alone")
        return _inspect_lm(args)
    if kind == LAG:
        return _inspect_lag(args)
    raise ValueError(f"{args.run} holds a {kind!r} checkpoint; inspect reads lm and lag runs")


def _inspect_lag(args: argparse.Namespace) -> int:
    from carousel.data.tasks import make_batch
    from carousel.inspection.lag import carousel_figure, lag_summary, readout_units, record_lag
    from carousel.io import atomic_write
    from carousel.lag.train import load_lag

    if args.text is not None or args.prime is not None:
        raise ValueError(
            "--text and --prime are for language models; a lag run is inspected on sequences "
            "of its own task (--seed, --sequence)"
        )
    set_threads(args)
    models, shapes = {}, {}
    for run in [args.run, *args.beside]:
        model, cfg, _ = load_lag(run)
        label = f"{cfg.cell} ({Path(run).name})"
        models[label], shapes[label] = model, (cfg.task, cfg.T)
    if len(set(shapes.values())) != 1:
        got = ", ".join(f"{k}: {task} T={T}" for k, (task, T) in shapes.items())
        raise ValueError(f"--beside runs must have the same task and T; got {got}")
    task, T = next(iter(shapes.values()))
    sequences = 64
    if not 0 <= args.sequence < sequences:
        raise ValueError(f"--sequence must lie in 0..{sequences - 1}; got {args.sequence}")
    batch = make_batch(task, sequences, T, args.seed)
    title = f"{task}, T = {T}: sequence {args.sequence} of seed {args.seed}"
    png = carousel_figure(models, batch, sequence=args.sequence, title=title)
    out = Path(args.out) if args.out else Path(args.run) / "inspect"
    path = atomic_write(out / LAG_FIGURE, png)
    print(f"{task} T={T}, {sequences} sequences of seed {args.seed}; between the marked steps:")
    for label, model in models.items():
        rec = record_lag(model, batch)
        units = readout_units(model, rec)
        summary = lag_summary(model, batch, rec)
        state = "s" if "s" in rec.values[0][0] else "h"
        for j in units:
            line = (
                f"  {label} unit {j}: mean |Δ{state}| per step {summary['drift'][:, j].mean():.4f}"
            )
            if "gate" in summary:
                line += f", mean input gate {float(summary['gate'][:, j].mean()):.4f}"
            print(line)
    print(f"figure: {path}")
    return 0


def _inspect_lm(args: argparse.Namespace) -> int:

    from carousel.inspection.lm import inspect_text
    from carousel.lm.sample import generate
    from carousel.lm.train import load_lm

    if (args.text is None) == (args.prime is None):
        raise ValueError("give either --text FILE or --prime TEXT (with --length N)")
    set_threads(args)
    model, vocab, cfg, _ = load_lm(args.run)
    if args.text is not None:
        try:
            text = Path(args.text).read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{args.text} is not UTF-8 text ({err.reason})") from err
        if args.length is not None:
            if args.length < 1:
                raise ValueError(f"--length must be positive; got {args.length}")
            text = text[: args.length]
        source = f"text: {args.text}"
    else:
        length = 1000 if args.length is None else args.length
        if length < 1:
            raise ValueError(f"--length must be positive; got {length}")
        sample = generate(
            model, vocab, args.prime, length, temperature=args.temperature, seed=args.seed
        )
        text = args.prime + sample
        source = (
            f"text: the model's own sample after {args.prime!r} ({length} characters, "
            f"temperature {args.temperature:g}, seed {args.seed})"
        )
    out = Path(args.out) if args.out else Path(args.run) / "inspect"
    title = f"carousel inspect {Path(args.run).name}"
    notes = (
        f"model: {cfg.cell}, {cfg.num_layers} × {cfg.hidden_size} units, "
        f"{len(vocab)} characters; reference path",
        source,
    )
    summary = inspect_text(
        model,
        vocab,
        text,
        out,
        page_chars=args.page_chars,
        title=title,
        notes=notes,
    )
    print(f"{len(text):,} characters recorded")
    for feature, units in summary["best"].items():
        if units:
            u = units[0]
            print(f"  {feature:16s} {u['signal']} #{u['unit']:<4d} r = {u['r']:+.3f}")
        else:
            print(f"  {feature:16s} (constant in this text)")
    for name, path in summary["files"].items():
        print(f"{name}: {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``carousel inspect`` to the command line."""
    p = sub.add_parser("inspect", help="look inside a trained network: gates, states, units")
    p.add_argument("run", help="run folder or checkpoint file (a language model or a lag run)")
    p.add_argument("--text", default=None, help="UTF-8 text file to run the model over")
    p.add_argument("--prime", default=None, help="inspect the model's own sample after TEXT")
    p.add_argument(
        "--length",
        type=int,
        default=None,
        help="characters to sample after --prime (default 1000), or to read of --text",
    )
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--seed", type=int, default=0, help="sampling seed; lag runs: the sequences'")
    p.add_argument(
        "--beside",
        action="append",
        default=[],
        metavar="RUN",
        help="lag runs: another run of the same task and T drawn beside RUN (repeatable)",
    )
    p.add_argument(
        "--sequence", type=int, default=0, help="lag runs: which of 64 sequences to draw (0)"
    )
    p.add_argument("--out", default=None, help="folder for the page and figures (RUN/inspect)")
    p.add_argument(
        "--page-chars", type=int, default=2000, help="characters shown on the page (2000)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.set_defaults(func=cmd_inspect)
