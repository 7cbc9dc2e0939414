"""``carousel inspect RUN``: look inside a trained network.

For a character language model, ``--text FILE`` (or ``--prime TEXT --length N``: the model's
own sample) is run through the model on the reference path; the page, the figures and the
units' correlations with the text's features go to ``--out`` (default ``RUN/inspect``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from carousel.checkpoint import load_checkpoint


def cmd_inspect(args: argparse.Namespace) -> int:
    from carousel.lm.cli import KIND as LM

    kind = load_checkpoint(args.run)[1].get("kind")
    if kind != LM:
        raise ValueError(f"{args.run} holds a {kind!r} checkpoint; inspect reads lm runs")
    return _inspect_lm(args)


def _inspect_lm(args: argparse.Namespace) -> int:
    import torch

    from carousel.inspection.lm import inspect_text
    from carousel.lm.sample import generate
    from carousel.lm.train import load_lm

    if (args.text is None) == (args.prime is None):
        raise ValueError("give either --text FILE or --prime TEXT (with --length N)")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be positive; got {args.threads}")
        torch.set_num_threads(args.threads)
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
    p.add_argument("run", help="run folder or checkpoint file")
    p.add_argument("--text", default=None, help="UTF-8 text file to run the model over")
    p.add_argument("--prime", default=None, help="inspect the model's own sample after TEXT")
    p.add_argument(
        "--length",
        type=int,
        default=None,
        help="characters to sample after --prime (default 1000), or to read of --text",
    )
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--out", default=None, help="folder for the page and figures (RUN/inspect)")
    p.add_argument(
        "--page-chars", type=int, default=2000, help="characters shown on the page (2000)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.set_defaults(func=cmd_inspect)
