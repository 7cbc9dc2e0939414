"""The long-time-lag commands: ``carousel lag`` (also ``carousel train lag``), ``carousel
gradflow`` and the lag run's ``carousel eval`` (registered by :func:`register`).

Every run trains into a run folder: ``--out RUN``, or ``runs/lag-TASK-TT-CELL-seedS`` (with
``-2``, ``-3``, ... once that holds a run); ``--resume RUN`` continues one.  An ``--out``
ending in ``.json`` names the result file as it did before run folders: the run folder is
the same path without the suffix (numbered the same way) and the result is written to both.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from carousel.config import add_config_arguments, overrides_from_args, resolve_config
from carousel.io import atomic_write
from carousel.lag.config import LagConfig
from carousel.lag.gradflow import GradflowConfig, run_gradflow
from carousel.lag.sweep import run_sweep
from carousel.lag.train import KIND, LagJob, describe, load_lag, result_json, run_lag


def fresh_folder(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``, ... : the first that holds no checkpoint."""
    folder, n = base, 1
    while (folder / "checkpoint.safetensors").exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return folder


def cmd_lag(args: argparse.Namespace) -> int:
    overrides = overrides_from_args(args)
    if args.resume and (args.out or args.preset or args.sweep):
        raise ValueError(
            "--resume continues a run with its own settings; drop --out/--preset/--sweep "
            "(a sweep resumes when its command runs again)"
        )
    if args.sweep:
        cfg = resolve_config(LagConfig, args.preset or "lag-sweep", overrides)
        run_sweep(cfg, args.out or "lag-sweep", progress=args.progress)
        return 0
    legacy = None
    if args.resume:
        run, cfg = Path(args.resume), None
        print(f"{run}: resuming", flush=True)
    else:
        cfg = resolve_config(LagConfig, args.preset or "lag", overrides)
        if args.out is None or args.out.endswith(".json"):
            legacy = args.out
            default = f"runs/lag-{cfg.task}-T{cfg.T}-{cfg.cell}-seed{cfg.seed}"
            run = fresh_folder(Path(args.out[: -len(".json")] if legacy else default))
        else:
            run = Path(args.out)
        print(
            f"{cfg.task} T={cfg.T} cell={cfg.cell} seed={cfg.seed}: training in {run}", flush=True
        )
    result = run_lag(
        cfg, run, resume=bool(args.resume), overrides=overrides, progress=args.progress
    )
    print(describe(result))
    if legacy:
        atomic_write(legacy, result_json(result))
        print(f"wrote {legacy}")
    print(f"run folder: {run}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``carousel eval`` of a lag run: its test set again, and the verdict."""
    if args.data is not None:
        raise ValueError("a lag run's test set is generated from its seed; drop --data")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, cfg, meta = load_lag(args.checkpoint)
    job = LagJob(cfg, torch.device("cpu"))
    job.last = job.evaluate(model)
    job.tests, job.test_seconds = meta["job_state"]["tests"], meta["job_state"]["test_seconds"]
    cursor = meta["cursor"]
    summary = {"reason": cursor["stopped"], "seen": cursor["seen"], "elapsed": cursor["elapsed"]}
    print(describe(job.result(summary)))
    return 0


def cmd_gradflow(args: argparse.Namespace) -> int:
    run_gradflow(resolve_config(GradflowConfig, args.preset, overrides_from_args(args)))
    return 0


def _lag_arguments(p: argparse.ArgumentParser, preset: str) -> None:
    p.add_argument("--preset", default=None, help=f"preset name or TOML file (default {preset})")
    p.add_argument(
        "--out", help="run folder (default runs/lag-TASK-TT-CELL-seedS); NAME.json: result file"
    )
    p.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN exactly")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_config_arguments(p, LagConfig)
    p.set_defaults(func=cmd_lag, sweep=False)


def register(sub: argparse._SubParsersAction, jobs: argparse._SubParsersAction) -> None:
    """Add the ``lag`` job to ``carousel train``, and ``lag`` and ``gradflow`` to ``carousel``."""
    what = "a long-time-lag task (adding, multiplication, order6a/6b, copy) until the 1997 "
    _lag_arguments(jobs.add_parser("lag", help=what + "paper's criterion holds"), "lag")
    p = sub.add_parser("lag", help="train on " + what + "paper's criterion holds")
    p.add_argument(
        "--sweep",
        action="store_true",
        help="run sweep_tasks × sweep_T × sweep_cells × sweep_seeds, each in its own run "
        "folder; write a markdown table and a PNG into --out (default lag-sweep/); run "
        "again to resume",
    )
    _lag_arguments(p, "lag, or lag-sweep")
    p = sub.add_parser(
        "gradflow",
        help="measure ‖∂L/∂h_t‖ and ‖∂L/∂s_t‖ against the distance from the loss; write a PNG",
    )
    p.add_argument("--preset", default="gradflow", help="preset name or TOML file")
    add_config_arguments(p, GradflowConfig)
    p.set_defaults(func=cmd_gradflow)


__all__ = ["KIND", "cmd_eval", "cmd_gradflow", "cmd_lag", "register"]
