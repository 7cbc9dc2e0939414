"""The NTM commands: ``carousel train ntm --task copy``, and the NTM's ``carousel eval RUN
--length 20,40,60,80,120`` and ``carousel plot RUN``.

Without ``--preset`` the task's preset is used (``ntm-copy`` for ``--task copy``, the default
task); ``--model lstm`` (or ``--preset ntm-copy-lstm``) trains the LSTM baseline instead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from carousel.config import add_run_arguments, overrides_from_args, resolve_config
from carousel.ntm.config import NTMConfig

KIND = "ntm"


def preset_for(args: argparse.Namespace, overrides: dict[str, str]) -> str:
    """The preset named, else the task's: ``ntm-TASK``."""
    if args.preset:
        return args.preset
    return f"ntm-{overrides.get('task', NTMConfig.task)}"


def cmd_train(args: argparse.Namespace) -> int:
    from carousel.ntm.train import train_ntm
    from carousel.train import plot_metrics

    overrides = overrides_from_args(args)
    if args.resume:
        if args.out or args.preset:
            raise ValueError("--resume continues a run with its own settings; drop --out/--preset")
        run = Path(args.resume)
        summary = train_ntm(None, run, resume=True, overrides=overrides, progress=args.progress)
    else:
        preset = preset_for(args, overrides)
        cfg = resolve_config(NTMConfig, preset, overrides)
        run = Path(args.out or Path("runs") / Path(preset).stem)
        summary = train_ntm(cfg, run, progress=args.progress)
    scores = summary.get("scores") or {}
    shown = (
        f"{scores['bits_per_sequence']:.3f} bits/seq, {scores['bit_errors']:.3f} bit errors/seq"
        if scores
        else "not evaluated"
    )
    print(
        f"trained {summary['seen']} sequences, {summary['step']} steps ({summary['reason']}); "
        f"evaluation {shown}"
    )
    print(f"checkpoint: {run / 'checkpoint.safetensors'}")
    print(f"curves: {plot_metrics(run)}")
    return 0


def parse_lengths(text: str | None, default: tuple[int, ...]) -> list[int]:
    if not text:
        return list(default)
    try:
        lengths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--length must be comma-separated integers; got {text!r}") from None
    if not lengths or min(lengths) < 1:
        raise ValueError(f"--length must be positive integers; got {text!r}")
    return lengths


def cmd_eval(args: argparse.Namespace) -> int:
    """``carousel eval`` of an NTM run: bits and bit errors per sequence at each ``--length``."""
    import torch

    from carousel.ntm.train import evaluate_lengths, load_ntm

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, cfg, _ = load_ntm(args.checkpoint)
    lo, hi = cfg.lengths
    lengths = parse_lengths(getattr(args, "length", None), (hi,))
    sequences = getattr(args, "sequences", None) or 256
    rows = evaluate_lengths(model, cfg, lengths, sequences=sequences)
    what = "items" if cfg.task == "associative-recall" else "length"
    print(f"{cfg.task}, {cfg.model}, trained on {what} {lo}..{hi}; {sequences} sequences each")
    for row in rows:
        print(
            f"{what} {row['length']:4d}: {row['bits_per_sequence']:9.3f} bits/seq "
            f"{row['bit_errors']:8.3f} bit errors/seq {100 * row['perfect']:6.1f} % perfect"
        )
    if getattr(args, "json", None):
        from carousel.io import atomic_write

        atomic_write(args.json, json.dumps(rows, indent=1))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """``carousel plot`` of an NTM run: its curves and the weightings of one sequence."""
    from carousel.ntm.plot import plot_trace
    from carousel.ntm.train import load_ntm, trace
    from carousel.train import plot_metrics

    run = Path(args.run)
    model, cfg, _ = load_ntm(run)
    print(plot_metrics(run, args.out))
    if cfg.model == "ntm":
        length = getattr(args, "length", None)
        L = parse_lengths(length, (cfg.lengths[1],))[0]
        title = f"{cfg.task}, length {L}"
        print(plot_trace(trace(model, cfg, L), run / "memory.png", title))
    return 0


def register(sub: argparse._SubParsersAction, jobs: argparse._SubParsersAction) -> None:
    """Add the ``ntm`` job to ``carousel train``."""
    p = jobs.add_parser(
        "ntm", help="a Neural Turing Machine (or the LSTM baseline) on a memory task"
    )
    add_run_arguments(p, NTMConfig, "preset name or TOML file (default ntm-TASK)")
    p.set_defaults(func=cmd_train)


__all__ = ["KIND", "cmd_eval", "cmd_plot", "cmd_train", "register"]
