"""``carousel train handwriting``, ``carousel read`` and the handwriting ``carousel eval``.

A handwriting run folder is the shared loop's (:mod:`carousel.train`):
``checkpoint.safetensors`` (the recogniser's current and best weights, optimizer and RNG
state, and as JSON the job ``"handwriting"``, its task, architecture, settings: the
featurisation and ``beam_width`` that reading needs, and the archive it was trained on),
``metrics.jsonl`` and ``curves.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from carousel.checkpoint import load_checkpoint
from carousel.config import add_run_arguments, overrides_from_args, resolve_config
from carousel.data.unipen import read_stroke_file, read_unipen, split_by_organisation
from carousel.handwriting.config import HandwritingConfig
from carousel.handwriting.recognise import recognise
from carousel.handwriting.train import (
    KIND,
    TASKS,
    held_out_scores,
    load_recogniser,
    train_handwriting,
)
from carousel.train import Run, plot_metrics

__all__ = ["KIND", "cmd_eval", "cmd_read", "cmd_train", "register"]


def _print_scores(task: str, scores: dict, where: str) -> None:
    if task == "digits":
        print(f"{where}: accuracy {100 * scores['accuracy']:.2f} %")
        for org, result in scores["by_organisation"].items():
            digits = sum(map(sum, result["confusion"]))
            print(f"  {org}: {digits} digits, accuracy {100 * result['accuracy']:.2f} %")
    else:
        greedy, beam = scores["greedy"], scores["beam"]
        print(
            f"{where}: CER greedy {100 * greedy['cer']:.2f} %, beam {100 * beam['cer']:.2f} %; "
            f"strings read exactly {100 * greedy['string_accuracy']:.1f} % / "
            f"{100 * beam['string_accuracy']:.1f} %"
        )


def cmd_train(args: argparse.Namespace) -> int:
    overrides = overrides_from_args(args)
    if args.resume:
        if args.out or args.preset or args.task:
            raise ValueError(
                "--resume continues a run with its own settings; drop --out/--preset/--task"
            )
        run = Path(args.resume)
        data = args.data or load_checkpoint(run, kind=KIND)[1].get("data")
        if not data:
            raise ValueError(f"{run} does not say which archive it was trained on; give --data")
        cfg, task = None, "digits"  # the run's own
    else:
        if not args.data:
            raise ValueError("a new handwriting run needs --data (the UNIPEN archive)")
        task = args.task or "digits"
        preset = args.preset or f"unipen-{task}"
        cfg = resolve_config(HandwritingConfig, preset, overrides)
        run = Path(args.out or Path("runs") / Path(preset).stem)
        data = args.data
    _, metrics = train_handwriting(
        cfg,
        read_unipen(data),
        run,
        task=task,
        resume=bool(args.resume),
        overrides=overrides,
        data=str(Path(data).resolve()),
        progress=args.progress,
    )
    if "test" in metrics:
        _print_scores(metrics["task"], metrics["test"], "test")
    paths = Run(run)
    print(f"checkpoint: {paths.checkpoint}")
    if paths.metrics.exists():
        stale = not paths.curves.exists() or (
            paths.curves.stat().st_mtime_ns < paths.metrics.stat().st_mtime_ns
        )
        print(f"curves: {plot_metrics(run) if stale else paths.curves}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``carousel eval`` of a handwriting run: its test scores on ``--data`` (default: the
    archive it was trained on), whose test organisations are held out of training."""
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    model, cfg, meta = load_recogniser(args.checkpoint)
    data = args.data or meta.get("data")
    if not data:
        raise ValueError("evaluating a handwriting model needs --data (the UNIPEN archive)")
    test = split_by_organisation(read_unipen(data))["test"]
    scores = held_out_scores(model, meta["task"], cfg, test)
    what = f"{len(test)} digits" if meta["task"] == "digits" else f"{cfg.eval_strings} strings"
    orgs = ", ".join(sorted({s.organisation for s in test}))
    _print_scores(meta["task"], scores, f"{data}: test ({orgs}; {what})")
    return 0


def cmd_read(args: argparse.Namespace) -> int:
    model, cfg, _ = load_recogniser(args.checkpoint)
    beam = cfg.beam_width if args.beam_width is None else args.beam_width
    strokes = read_stroke_file(args.strokes)
    print(recognise(model, strokes, featurisation=cfg.featurisation, beam_width=beam))
    return 0


def register(sub: argparse._SubParsersAction, jobs: argparse._SubParsersAction) -> None:
    """Add the ``handwriting`` job to ``carousel train`` and ``read`` to ``carousel``."""
    p = jobs.add_parser("handwriting", help="UNIPEN digits: isolated (digits) or strings (CTC)")
    p.add_argument("--data", help="the UNIPEN archive unipen_1a.tar.gz (resume: the run's)")
    p.add_argument("--task", choices=TASKS, default=None, help="digits (default) or strings")
    add_run_arguments(p, HandwritingConfig, "preset name or TOML file (default unipen-TASK)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("read", help="recognise the digits in a UNIPEN-notation stroke file")
    p.add_argument("checkpoint", help="handwriting checkpoint file or run folder")
    p.add_argument("strokes", help="stroke file (.PEN_DOWN / .PEN_UP x y lines)")
    p.add_argument(
        "--beam-width",
        type=int,
        default=None,
        help="beam search width for strings (default: the checkpoint's; 0 greedy)",
    )
    p.set_defaults(func=cmd_read)
