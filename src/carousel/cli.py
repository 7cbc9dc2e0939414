"""The ``carousel`` command-line tool.

Each command is a module-level function taking the parsed arguments; errors a user can fix
(``ValueError``, ``OSError``) are printed as one line on stderr with exit status 2, never as a
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from carousel.cells import CELLS
from carousel.config import add_config_arguments, overrides_from_args, resolve_config


def cmd_cells(args: argparse.Namespace) -> int:
    """List the registered cells with their gate blocks and options."""
    for name, cell in CELLS.items():
        blocks = "".join(cell.gates())
        peep = ",".join(cell.peephole_names()) or "-"
        print(f"{name:9s} {cell.family:5s} gates={blocks:5s} peepholes={peep:9s} {cell!r}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from carousel.demo import DemoConfig, run_demo

    run_demo(resolve_config(DemoConfig, args.preset, overrides_from_args(args)))
    return 0


def _demo_config() -> type:
    from carousel.demo import DemoConfig

    return DemoConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carousel", description="Recurrent sequence learning: RNN, LSTM family, GRU."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("cells", help="list the registered cells and LSTM variants")
    p.set_defaults(func=cmd_cells)
    p = sub.add_parser("demo", help="train a small character model and print a sample")
    p.add_argument("--preset", default="demo", help="preset name or TOML file (default demo)")
    add_config_arguments(p, _demo_config())
    p.set_defaults(func=cmd_demo)
    __import__("carousel.lag.cli", fromlist=["register"]).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as err:
        print(f"carousel {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"carousel {args.command}: interrupted", file=sys.stderr)
        return 130
