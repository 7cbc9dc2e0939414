"""The language-modelling commands: ``carousel train [lm]``, ``sample``, ``export``, ``plot``
and the language model's ``carousel eval``.

``lm`` is the default job of ``carousel train`` (see :mod:`carousel.cli`), so
``carousel train --preset char-small`` and ``carousel train lm --preset char-small`` are the
same command.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from carousel.config import add_run_arguments, overrides_from_args, resolve_config, set_threads
from carousel.lm.config import LMConfig
from carousel.lm.train import KIND


def cmd_train(args: argparse.Namespace) -> int:
    from carousel import distributed as ddp
    from carousel.lm.train import describe_loss, train_lm
    from carousel.train import plot_metrics

    overrides = overrides_from_args(args)
    if args.resume:
        if args.out or args.preset:
            raise ValueError("--resume continues a run with its own settings; drop --out/--preset")
        run = Path(args.resume)
        summary = train_lm(None, run, resume=True, overrides=overrides, progress=args.progress)
    else:
        cfg = resolve_config(LMConfig, args.preset, overrides)
        run = Path(args.out or Path("runs") / Path(args.preset or "lm").stem)
        summary = train_lm(cfg, run, progress=args.progress)
    if ddp.rank() == 0 and summary["trained"]:  # a finished run said so and stays as it was
        from carousel.lm.train import load_lm

        level = load_lm(run / "checkpoint.safetensors")[2].level
        loss = summary["valid_loss"]
        shown = describe_loss(loss, level) if math.isfinite(loss) else "not evaluated"
        print(f"trained {summary['step']} steps ({summary['reason']}); validation {shown}")
        print(f"checkpoint: {run / 'checkpoint.safetensors'}")
        print(f"curves: {plot_metrics(run)}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``carousel eval`` of a language model: its loss on ``--data``."""
    from carousel.data.corpora import read_text
    from carousel.lm.train import evaluate, load_lm
    from carousel.train import LOG2

    set_threads(args)
    if args.data is None:
        raise ValueError("evaluating a language model needs --data FILE")
    model, vocab, cfg, _ = load_lm(args.checkpoint)
    text = read_text(args.data)
    tokens = text if vocab.level == "char" else vocab.split(text)
    if not tokens:
        raise ValueError(f"{args.data} holds no lines of tokens")
    ids = vocab.encode(tokens, str(args.data))
    if ids.numel() < 2:
        raise ValueError(f"{args.data} is too short to evaluate (fewer than 2 tokens)")
    loss = evaluate(model, ids, args.batch_size, args.bptt or cfg.bptt, precision=cfg.precision)
    if vocab.level == "char":
        print(
            f"{args.data}: {ids.numel()} characters, {loss / LOG2:.4f} bits/char, "
            f"{loss:.4f} nats/char"
        )
    else:
        print(
            f"{args.data}: {ids.numel()} words, perplexity {math.exp(loss):.2f}, "
            f"{loss:.4f} nats/word"
        )
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from carousel.lm.sample import generate, top_continuations
    from carousel.lm.train import load_lm

    set_threads(args)
    model, vocab, _, _ = load_lm(args.checkpoint)
    prime = args.prime
    if prime is None:
        prime = "\n" if vocab.level == "char" and "\n" in vocab.index else vocab.tokens[0]
        if vocab.level == "word" and "<eos>" in vocab.index:
            prime = "<eos>"
    if args.top:
        for token, p in top_continuations(model, vocab, prime, args.top):
            print(f"{p:8.4f}  {token!r}")
        return 0
    out = sys.stdout
    out.write(prime if vocab.level == "char" else prime + " ")
    generate(
        model,
        vocab,
        prime,
        args.length,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        emit=lambda s: (out.write(s), out.flush()),
    )
    out.write("\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from carousel.lm.export import export_onnx
    from carousel.lm.train import load_lm

    model, vocab, _, _ = load_lm(args.checkpoint)
    path = export_onnx(model, vocab, args.onnx)
    names = ", ".join(f"{n}0" for n in model.rnn.cell.state_names)
    print(f"wrote {path}: ids (T, B), {names} -> logits (T, B, {len(vocab)}) and the new state")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from carousel.train import plot_metrics

    print(plot_metrics(args.run, args.out))
    return 0


def register(sub: argparse._SubParsersAction, jobs: argparse._SubParsersAction) -> None:
    """Add the ``lm`` job to ``carousel train`` and ``sample``, ``plot`` to ``carousel``."""
    p = jobs.add_parser("lm", help="a language model of characters or words (the default)")
    add_run_arguments(p, LMConfig, "preset name (zaremba-small, char-small, ...) or TOML file")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate text from a checkpoint, streamed")
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("--prime", default=None, help="text to start from")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--length", type=int, default=500)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--top",
        type=int,
        default=0,
        metavar="N",
        help="print the N most likely next tokens after --prime instead",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("export", help="write a language model as an ONNX file")
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("--onnx", required=True, metavar="FILE", help="ONNX file to write")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("plot", help="PNG of a run's training and validation curves")
    p.add_argument("run", help="run folder (holds metrics.jsonl)")
    p.add_argument("--out", default=None, help="PNG path (default RUN/curves.png)")
    p.set_defaults(func=cmd_plot)


__all__ = ["KIND", "cmd_eval", "cmd_plot", "cmd_sample", "cmd_train", "register"]
