"""The ``carousel lag`` and ``carousel gradflow`` commands (registered by :func:`register`)."""

from __future__ import annotations

import argparse

from carousel.config import add_config_arguments, overrides_from_args, resolve_config
from carousel.lag.gradflow import GradflowConfig, run_gradflow
from carousel.lag.sweep import run_sweep
from carousel.lag.train import LagConfig, describe, result_json, run_lag, write_atomic


def cmd_lag(args: argparse.Namespace) -> int:
    preset = args.preset or ("lag-sweep" if args.sweep else "lag")
    cfg = resolve_config(LagConfig, preset, overrides_from_args(args))
    if args.sweep:
        run_sweep(cfg)
        return 0
    print(f"{cfg.task} T={cfg.T} cell={cfg.cell} seed={cfg.seed}: training", flush=True)
    result = run_lag(cfg, log=lambda msg: print(msg, flush=True))
    print(describe(result))
    if cfg.out:
        write_atomic(cfg.out, result_json(result))
        print(f"wrote {cfg.out}")
    return 0


def cmd_gradflow(args: argparse.Namespace) -> int:
    run_gradflow(resolve_config(GradflowConfig, args.preset, overrides_from_args(args)))
    return 0


def register(subparsers) -> None:
    """Add ``lag`` and ``gradflow`` to the ``carousel`` command's subparsers."""
    p = subparsers.add_parser(
        "lag",
        help="train on a long-time-lag task (adding, multiplication, order6a/6b, copy) "
        "until the 1997 paper's criterion holds",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="run sweep_tasks × sweep_T × sweep_cells × sweep_seeds; write a markdown "
        "table and a PNG into --out (default lag-sweep/)",
    )
    p.add_argument(
        "--preset", default=None, help="preset name or TOML file (default lag, or lag-sweep)"
    )
    add_config_arguments(p, LagConfig)
    p.set_defaults(func=cmd_lag)
    p = subparsers.add_parser(
        "gradflow",
        help="measure ‖∂L/∂h_t‖ and ‖∂L/∂s_t‖ against the distance from the loss; write a PNG",
    )
    p.add_argument("--preset", default="gradflow", help="preset name or TOML file")
    add_config_arguments(p, GradflowConfig)
    p.set_defaults(func=cmd_gradflow)
