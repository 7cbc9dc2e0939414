"""``carousel train handwriting`` and ``carousel read``.

A handwriting checkpoint is ``RUN/checkpoint.safetensors`` (:mod:`carousel.checkpoint`): the
recogniser's tensors, and as JSON its kind (``"handwriting"``), architecture, settings (the
resampling ``step`` and ``beam_width`` that reading needs) and scores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from carousel.checkpoint import load_checkpoint, save_checkpoint
from carousel.config import (
    add_config_arguments,
    config_from_dict,
    config_to_dict,
    overrides_from_args,
    resolve_config,
)
from carousel.handwriting.model import (
    DigitClassifier,
    StringRecogniser,
    recogniser_from_parts,
    recogniser_to_parts,
)
from carousel.handwriting.train import (
    HandwritingConfig,
    feature_options,
    recognise,
    train_digit_classifier,
    train_string_recogniser,
)

KIND = "handwriting"
TASKS = {"digits": train_digit_classifier, "strings": train_string_recogniser}


def save_recogniser(
    run: Path,
    model: DigitClassifier | StringRecogniser,
    cfg: HandwritingConfig,
    task: str,
    metrics: dict,
) -> Path:
    """Write ``run/checkpoint.safetensors`` (atomically) and return its path."""
    tensors, meta = recogniser_to_parts(model)
    run.mkdir(parents=True, exist_ok=True)
    path = run / "checkpoint.safetensors"
    info = {"kind": KIND, "task": task, "config": config_to_dict(cfg), "metrics": metrics}
    save_checkpoint(path, tensors, {**info, **meta})
    return path


def cmd_train(args: argparse.Namespace) -> int:
    from carousel.data.unipen import read_unipen

    preset = args.preset or f"unipen-{args.task}"
    cfg = resolve_config(HandwritingConfig, preset, overrides_from_args(args))
    run = Path(args.out or Path("runs") / Path(preset).stem)
    model, metrics = TASKS[args.task](cfg, read_unipen(args.data))
    path = save_recogniser(run, model, cfg, args.task, metrics)
    if "test" in metrics:
        print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics["test"].items()))
    print(f"checkpoint: {path}")
    return 0


def cmd_read(args: argparse.Namespace) -> int:
    from carousel.data.unipen import read_stroke_file

    tensors, meta = load_checkpoint(args.checkpoint, kind=KIND)
    cfg = config_from_dict(HandwritingConfig, meta["config"])
    model = recogniser_from_parts(tensors, meta)
    beam = cfg.beam_width if args.beam_width is None else args.beam_width
    strokes = read_stroke_file(args.strokes)
    print(recognise(model, strokes, cfg.step, beam, **feature_options(cfg)))
    return 0


def register(sub: argparse._SubParsersAction, jobs: argparse._SubParsersAction) -> None:
    """Add the ``handwriting`` job to ``carousel train`` and ``read`` to ``carousel``."""
    p = jobs.add_parser("handwriting", help="UNIPEN digits: isolated (digits) or strings (CTC)")
    p.add_argument("--data", required=True, help="the UNIPEN archive unipen_1a.tar.gz")
    p.add_argument("--task", choices=tuple(TASKS), default="digits")
    p.add_argument("--preset", help="preset name or TOML file (default unipen-TASK)")
    p.add_argument("--out", help="run folder (default runs/PRESET)")
    add_config_arguments(p, HandwritingConfig)
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
