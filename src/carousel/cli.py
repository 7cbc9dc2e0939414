"""The ``carousel`` command-line tool.

Each command is a module-level function taking the parsed arguments; errors a user can fix
(``ValueError``, ``OSError``) are printed as one line on stderr with exit status 2, never as a
traceback.  ``carousel train JOB`` trains one of the jobs (``lm``, the default when no job is
named, ``tagger``, ``handwriting``, ``ntm``); each job module registers its own ``train`` job and
commands, and ``carousel eval`` reads the job from the checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from carousel.cells import CELLS
from carousel.checkpoint import load_checkpoint
from carousel.handwriting import cli as handwriting_cli
from carousel.inspection import cli as inspection_cli
from carousel.lag import cli as lag_cli
from carousel.lm import cli as lm_cli
from carousel.ntm import cli as ntm_cli
from carousel.tagging import cli as tagging_cli


def cmd_cells(args: argparse.Namespace) -> int:
    """List the registered cells with their gate blocks and options."""
    for name, cell in CELLS.items():
        blocks = "".join(cell.gates())
        peep = ",".join(cell.peephole_names()) or "-"
        print(f"{name:9s} {cell.family:5s} gates={blocks:5s} peepholes={peep:9s} {cell!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carousel", description="Recurrent sequence learning: RNN, LSTM family, GRU."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("cells", help="list the registered cells and LSTM variants")
    p.set_defaults(func=cmd_cells)
    train = sub.add_parser("train", help="train a model: JOB is lm (the default), tagger, ...")
    jobs = train.add_subparsers(dest="job", required=True, metavar="JOB")
    lm_cli.register(sub, jobs)
    tagging_cli.register(sub, jobs)
    handwriting_cli.register(sub, jobs)
    ntm_cli.register(sub, jobs)
    lag_cli.register(sub, jobs)
    inspection_cli.register(sub)
    p = sub.add_parser("eval", help="a checkpoint's scores (of whichever job wrote it)")
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("--data", default=None, help="the data to score on (the job says which)")
    p.add_argument("--batch-size", type=int, default=10, help="language models: streams")
    p.add_argument("--bptt", type=int, default=None, help="language models: default the run's")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--length", default=None, help="NTM: comma-separated lengths to score, e.g. 20,40,60"
    )
    p.add_argument("--sequences", type=int, default=None, help="NTM: sequences per length")
    p.add_argument("--json", default=None, help="NTM: also write the scores to this file")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser(
        "compare", help="PNG of one validation score of several runs (seeds, settings) together"
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (any job)")
    p.add_argument("--metric", default="loss", help="the validation score (default loss)")
    p.add_argument("--x", default="step", help="x axis: step, seen (items trained) or time")
    p.add_argument("--log-y", action="store_true", help="a symmetric-log y axis")
    p.add_argument("--out", default="comparison.png", help="the PNG (default comparison.png)")
    p.set_defaults(func=cmd_compare)
    plot = _subcommands(parser)["plot"]
    plot.add_argument("--length", default=None, help="NTM: the plotted sequence's length")
    plot.set_defaults(func=cmd_plot)
    return parser


#: the checkpoint's job ("kind") -> the command that evaluates it
EVALUATORS = {
    lm_cli.KIND: lm_cli.cmd_eval,
    tagging_cli.KIND: tagging_cli.cmd_eval,
    handwriting_cli.KIND: handwriting_cli.cmd_eval,
    ntm_cli.KIND: ntm_cli.cmd_eval,
    lag_cli.KIND: lag_cli.cmd_eval,
}

#: the checkpoint's job -> the command that plots its run (default: the curves)
PLOTTERS = {ntm_cli.KIND: ntm_cli.cmd_plot}


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint with the evaluator of the job that wrote it."""
    kind = load_checkpoint(args.checkpoint)[1].get("kind")
    if kind not in EVALUATORS:
        raise ValueError(
            f"{args.checkpoint} is a checkpoint of a {kind!r} job, which has no evaluation; "
            f"evaluable: {', '.join(EVALUATORS)}"
        )
    return EVALUATORS[kind](args)


def cmd_compare(args: argparse.Namespace) -> int:
    """One validation score of several runs on one figure."""
    from carousel.train import compare_runs

    print(compare_runs(args.runs, args.out, args.metric, args.x, args.log_y))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Plot a run with the plotter of the job that wrote it (default: the curves)."""
    from pathlib import Path

    checkpoint = Path(args.run) / "checkpoint.safetensors"
    kind = load_checkpoint(checkpoint)[1].get("kind") if checkpoint.exists() else None
    return PLOTTERS.get(kind, lm_cli.cmd_plot)(args)


DEFAULT_JOB = "lm"


def _with_default_job(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``carousel train --preset x`` means ``carousel train lm --preset x``."""
    if argv[:1] != ["train"] or argv[1:2] in (["-h"], ["--help"]):
        return argv
    jobs = _subcommands(_subcommands(parser)["train"])
    if argv[1:2] and argv[1] in jobs:
        return argv
    return ["train", DEFAULT_JOB, *argv[1:]]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_with_default_job(parser, argv))
    ok = False
    try:
        code = args.func(args)
        ok = True
        return code
    except (ValueError, OSError) as err:
        print(f"carousel {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"carousel {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if "torch.distributed" in sys.modules:  # under torchrun: leave the group on every path
            from carousel import distributed as ddp

            ddp.shutdown(together=ok)
